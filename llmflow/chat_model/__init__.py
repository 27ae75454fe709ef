"""The ONNX chat model: the files that ``log_pyfunc`` logs with the model and that run where the model is served,
where the ``llmflow`` package is not installed.

``log_pyfunc`` logs this whole folder as the model's code path, so a served model has it as ``code/chat_model`` and
imports it as the top-level package ``chat_model``. Its files therefore import each other with relative imports only
and import nothing else from ``llmflow`` (``tests/test_chat_model_package.py`` and the import-linter contract in
``pyproject.toml`` check it); the one exception is ``onnx_chat_model.py``, the models-from-code file, which is loaded
as a script and imports ``chat_model.*``, falling back on ``llmflow.chat_model.*`` inside the project. They import
only the standard library, mlflow, numpy, pandas and onnxruntime_genai.

- ``onnx_chat_model``: the pyfunc (models from code).
- ``chat_protocol``: the pyfunc's request and response formats, as pure functions.
- ``response_format``: OpenAI's ``response_format`` as onnxruntime-genai guidance (structured output).
- ``tools``, ``tool_prompt``, ``tool_replies``: OpenAI's ``tools`` and ``tool_choice`` in llama.cpp's generic format:
  their checks and guidance, the conversation a chat template gets, and the answer read back.
- ``generation``: the one onnxruntime-genai generation loop (the pyfunc, the export smoke test, the endpoint and the
  benchmark use it).
- ``rows``: the generation state of one row (tokens in, text out, stop strings, why it ended).
- ``cpus``: how many threads onnxruntime-genai generates with.

The HTTP endpoint that serves it is ``llmflow.serving``, which is not logged with the model.
"""
