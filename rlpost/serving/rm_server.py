"""A reward model behind HTTP, for the ``remote_reward_model`` reward (and its tests).

    python -m rlpost.serving.rm_server --model reward_models/out/rm_correct --port 8008 [--token s3cret]

Endpoints (JSON; with a token every request needs ``Authorization: Bearer <token>``, else 401):

    GET  /health    {"status": "ok", "model": path}
    POST /score     {"prompts": [...], "completions": [...]} -> {"scores": [...]}   (same length)

Scoring is :class:`rlpost.rewards.reward_model.RewardModelReward` (batched, on ``--device``); requests
are served one at a time (a lock around the model).
"""
import argparse
import hmac
import threading


def build_app(model_path: str, device: str = "cpu", batch_size: int = 32, token: str | None = None,
              scorer=None):
    """The FastAPI app. ``scorer`` (any TRL-style reward callable) replaces the loaded model (tests)."""
    from fastapi import FastAPI, HTTPException, Request
    from pydantic import BaseModel

    if scorer is None:
        from rlpost.rewards.reward_model import RewardModelReward
        scorer = RewardModelReward(model_path, batch_size=batch_size, device=device)
    lock = threading.Lock()
    app = FastAPI(title="rlpost reward model")

    class ScoreRequest(BaseModel):
        prompts: list[str]
        completions: list[str]

    def check(request: Request) -> None:
        if token and not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
            raise HTTPException(status_code=401, detail="bad or missing token")

    @app.get("/health")
    def health(request: Request):
        check(request)
        return {"status": "ok", "model": str(model_path)}

    @app.post("/score")
    def score(body: ScoreRequest, request: Request):
        check(request)
        if len(body.prompts) != len(body.completions):
            raise HTTPException(status_code=422, detail=f"{len(body.prompts)} prompts for "
                                                        f"{len(body.completions)} completions")
        with lock:
            scores = scorer(body.prompts, body.completions)
        return {"scores": [float(s) for s in scores]}

    return app


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0):
    """Start uvicorn on a background thread; returns (server, base_url). Stop with ``server.should_exit = True``."""
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("reward-model server did not start")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://{host}:{bound}"


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve a reward model (sequence-classification head) over HTTP.")
    parser.add_argument("--model", required=True, help="reward model folder or hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--token", default=None, help="shared secret clients send as a Bearer token")
    args = parser.parse_args(argv)
    app = build_app(args.model, args.device, args.batch_size, args.token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
