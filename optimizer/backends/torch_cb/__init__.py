"""transformers' continuous batching (backend `torch-cb`): a paged KV cache shared by requests
that join and leave between decode steps, with optional prefix sharing and KV offload."""
