"""The chain of steps that ``main`` runs and ``reproduce`` reruns: how a step runs, when a finished one is
reused, and the summary a person reads at the end."""
