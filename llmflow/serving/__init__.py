"""Serving: the files that run where the model is served, where the ``llmflow`` package is not installed.

``log_pyfunc`` logs this whole folder as the ONNX model's code path, so a served model has it as ``code/serving``
and imports it as the top-level package ``serving``. Its files therefore import each other with relative imports
only and import nothing from ``llmflow`` outside this package (``tests/test_serving_package.py`` checks it); the
one exception is ``onnx_chat_model.py``, the models-from-code file, which is loaded as a script and imports
``serving.*``, falling back on ``llmflow.serving.*`` inside the project. They import only the standard library,
mlflow, numpy, pandas and onnxruntime_genai, plus, for the OpenAI endpoint, fastapi, uvicorn, starlette, pydantic
and prometheus_client, and, only when the endpoint serves a transformers model, torch and transformers
(``transformers_chat``).

- ``chat_protocol``: the pyfunc's request and response formats, as pure functions.
- ``response_format``: OpenAI's ``response_format`` as onnxruntime-genai guidance (structured output).
- ``tools``, ``tool_prompt``, ``tool_replies``: OpenAI's ``tools`` and ``tool_choice`` in llama.cpp's generic format:
  their checks and guidance, the conversation a chat template gets, and the answer read back (not yet wired in).
- ``generation``: the one onnxruntime-genai generation loop (the pyfunc, the export smoke test, the endpoint and the
  benchmark use it).
- ``rows``: the generation state of one row (tokens in, text out, stop strings, why it ended).
- ``onnx_chat_model``: the pyfunc (models from code).
- ``transformers_chat``: the endpoint's backend for a transformers ``llm/v1/chat`` model, with the pyfunc's checks.
- ``openai_server`` and the modules it uses: the OpenAI-compatible ``/v1/chat/completions`` endpoint.
"""
