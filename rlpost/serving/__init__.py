"""``rlpost serve``: rollout workers that serve one vLLM engine over HTTP (server.py) and the weight transports
shared by the workers and their client, rlpost/engines/vllm_server.py (weights.py)."""
