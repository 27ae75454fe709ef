"""Speed benchmark of the project's serving paths on a random Phi-3-shaped model (``python -m bench.benchmark``).

The benchmark never reaches the Hugging Face Hub: the offline switches are set here, before anything in the
package imports ``huggingface_hub``.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
