"""The global suppression list: who must never be mailed, and each worker's copy."""
