"""``tta-run RECIPE serve``: a web page and an HTTP API over a run (:mod:`tta_core.serving`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .base import Verb, load_plugins, load_recipe, number
from .base import run_dir as base_run_dir
from ..errors import UsageError
from ..precision import PRECISIONS


def _args(p: argparse.ArgumentParser) -> None:
    where = p.add_argument_group("where")
    where.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; another address warns: "
                            "there is no login)")
    where.add_argument("--port", type=number(int, min=0, max=65535), default=7860,
                       help="port (default 7860; 0 picks a free one)")
    what = p.add_argument_group("what it serves")
    what.add_argument("--run-dir", default=None, help="the run directory (default runs/<recipe name>/)")
    what.add_argument("--ckpt", default=None, metavar="DIR", help="a checkpoint folder to take weights from first")
    what.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA copy")
    what.add_argument("--adapter", action="append", default=[], metavar="PATH[:SCALE]",
                      help="apply an adapter, as sample --adapter; repeatable")
    what.add_argument("--rerank", default=None, metavar="EMBEDDER",
                      help="the text-audio embedder that picks the best of several candidates (clap, or a "
                           "mapping '{type: clap, pretrained: FILE}'; default the recipe's eval.text_embedder)")
    what.add_argument("--out", default=None, metavar="DIR",
                      help="where generations are written, with a manifest.jsonl (default <run dir>/samples/studio/)")
    what.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    what.add_argument("--precision", choices=PRECISIONS, default="fp32",
                      help="run the denoiser under autocast in this precision")
    limits = p.add_argument_group("limits (each request beyond one is refused with a message)")
    limits.add_argument("--max-prompt-chars", type=number(int, min=1), default=500, metavar="N")
    limits.add_argument("--max-duration", type=number(float, above=0), default=30.0, metavar="SECONDS")
    limits.add_argument("--max-steps", type=number(int, min=1), default=200, metavar="N")
    limits.add_argument("--max-candidates", type=number(int, min=1), default=4, metavar="N",
                        help="outputs per request (default 4)")
    limits.add_argument("--max-upload-mb", type=number(float, above=0), default=10.0, metavar="MB",
                        help="size of an init-audio upload (wav, flac, ogg or mp3; default 10)")
    limits.add_argument("--max-queue", type=number(int, min=0), default=8, metavar="N",
                        help="generations waiting behind the running one; more are refused as busy (default 8)")


def _ranker(args: argparse.Namespace, registry, recipe) -> tuple[object | None, str | None]:
    """The reranking embedder (or None) and, without one, why."""
    spec = args.rerank or (recipe.get("eval") or {}).get("text_embedder")
    if not spec:
        return None, None  # the studio says why
    from ..eval.rerank import ranker

    try:
        return ranker(spec, registry, recipe=recipe, device=args.device), None
    except Exception as exc:
        if args.rerank:  # asked for by name: an error
            raise
        return None, f"the recipe's eval.text_embedder cannot be built here: {exc}"


def _serve(args: argparse.Namespace) -> int:
    from ..commands.sample import check_out
    from ..sampling import load_pipeline
    from ..serving import Limits, Studio, serve_forever

    recipe = load_recipe(args)
    registry = load_plugins(args).registry
    run_dir = base_run_dir(args, recipe)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file; it names the run folder `tta-run RECIPE train` writes")
    out = Path(args.out) if args.out else run_dir / "samples" / "studio"
    check_out(out)  # writable, and any manifest there is sample's: before the model loads
    limits = Limits(prompt_chars=args.max_prompt_chars, duration=args.max_duration, steps=args.max_steps,
                    candidates=args.max_candidates, upload_bytes=int(args.max_upload_mb * 2**20),
                    queue=args.max_queue)
    pipe = load_pipeline(recipe, run_dir=run_dir, ckpt=args.ckpt, device=args.device, precision=args.precision,
                         ema=not args.no_ema, registry=registry, adapters=args.adapter)
    ranker, why = _ranker(args, registry, recipe)
    studio = Studio(pipe, out, limits=limits, ranker=ranker, rerank_note=why, ema=not args.no_ema)
    serve_forever(studio, args.host, args.port)
    return 0


COMMANDS = [Verb("serve", "a web page and an HTTP API to generate with a run (the model loaded once)", _serve, _args)]
