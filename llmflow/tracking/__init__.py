"""What the steps record in MLflow and how they find each other's runs: names, runs, code digests, reuse."""
