"""The model a server holds and the queue in front of it: :class:`Studio`.

The pipeline is loaded once; generations run one at a time on one worker thread (one device,
one generation), in the order they came; others wait, each knowing its position. A request is
checked completely (limits, settings, upload) before it joins the queue, so what waits can
run. Outputs are written as ``tta-run sample`` writes them (audio, spectrogram, a manifest
line) into the studio's output folder, under names the studio makes: nothing a client sends
becomes a path.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import logging
import math
import re
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TtaError, UsageError

log = logging.getLogger("tta.serving")

#: upload types, told by their first bytes (a client's file name or type is never trusted)
AUDIO_MAGIC = {"wav": (b"RIFF",), "flac": (b"fLaC",), "ogg": (b"OggS",), "mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3",
                                                                               b"\xff\xf2")}


class RequestError(UsageError):
    """A request the studio refuses, with the HTTP status to answer it with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Busy(RequestError):
    """The queue is full: nothing was started; try again later."""

    def __init__(self, message: str):
        super().__init__(message, 503)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is refused with a message naming it."""

    prompt_chars: int = 500
    duration: float = 30.0  # seconds
    steps: int = 200
    candidates: int = 4
    upload_bytes: int = 10 * 2**20
    queue: int = 8  # generations waiting behind the running one

    def describe(self) -> dict:
        return {"prompt_chars": self.prompt_chars, "duration": self.duration, "steps": self.steps,
                "candidates": self.candidates, "upload_mb": round(self.upload_bytes / 2**20, 3), "queue": self.queue}


@dataclass
class Job:
    """One generation: its request, where it stands, and what it wrote."""

    id: str
    request: dict  # the checked request, as the page shows it back
    settings: Any  # SampleSettings
    n: int
    rerank: bool
    status: str = "queued"  # queued, running, done, error
    step: int = 0
    steps: int = 0
    batch: int = 0
    batches: int = 1
    error: str | None = None
    outputs: list[dict] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    seconds: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    upload: Path | None = None  # the studio's temporary copy of an uploaded clip, removed when done


# -- request fields -------------------------------------------------------------------------------


def _number(body: dict, key: str, kind: type, *, lo: float | None = None, hi: float | None = None,
            hi_name: str | None = None) -> Any:
    """``body[key]`` as ``kind`` within [lo, hi], or None when absent or null."""
    value = body.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{key} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RequestError(f"{key} must be a finite number, got {value!r}")
    if kind is int:
        if number != int(number):
            raise RequestError(f"{key} must be a whole number, got {value!r}")
        number = int(number)
    if lo is not None and number < lo:
        raise RequestError(f"{key} must be at least {lo:g}, got {number:g}")
    if hi is not None and number > hi:
        raise RequestError(f"{key} is at most {hi:g}{hi_name or ''}, got {number:g}")
    return number


def _text(body: dict, key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{key} must be text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > limit:
        raise RequestError(f"{key} is {len(value)} characters long; this server takes at most {limit}")
    return value


def audio_type(data: bytes) -> str | None:
    """The audio format ``data`` starts like (wav, flac, ogg, mp3), or None."""
    for name, heads in AUDIO_MAGIC.items():
        if any(data.startswith(h) for h in heads):
            if name == "wav" and data[8:12] != b"WAVE":
                return None
            return name
    return None


def decode_upload(value: Any, limit: int) -> tuple[bytes, str, str]:
    """An uploaded clip (``{"data": BASE64, "name": ...}`` or a base64 string): its bytes, its
    type, and the name the client gave (shown, never used as a path); checked to decode as audio."""
    name = ""
    if isinstance(value, dict):
        name = str(value.get("name") or "")[:120]
        value = value.get("data")
    if not isinstance(value, str):
        raise RequestError("init_audio must be base64 text or {\"data\": BASE64, \"name\": NAME}")
    if "," in value[:100] and value.startswith("data:"):  # a data: URL, as a browser reads a file
        value = value.split(",", 1)[1]
    if len(value) > limit * 4 // 3 + 8:
        raise RequestError(f"init_audio is over the upload limit of {limit / 2**20:g} MB", 413)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("init_audio is not valid base64") from None
    if len(data) > limit:
        raise RequestError(f"init_audio is {len(data) / 2**20:.1f} MB; the upload limit is {limit / 2**20:g} MB", 413)
    kind = audio_type(data)
    if kind is None:
        raise RequestError(f"init_audio{f' ({name})' if name else ''} is not an audio file this server takes: "
                           f"{', '.join(AUDIO_MAGIC)}", 415)
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(data))
        if info.frames <= 0:
            raise ValueError("no audio frames")
        soundfile.read(io.BytesIO(data), frames=min(info.frames, 1024))
    except Exception as exc:  # whatever libsndfile says of a damaged file
        raise RequestError(f"init_audio{f' ({name})' if name else ''} cannot be read as {kind}: {exc}") from None
    return data, kind, name


def _keep(value: Any) -> str | None:
    """keep spans as "0:1.5,3:4" or [[0, 1.5], [3, 4]]; checked by the sampling layer."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        if len(value) > 200 or not re.fullmatch(r"[0-9.:, \t-]*", value):
            raise RequestError("keep is spans in seconds, START:END[,START:END], e.g. 0:1.5,3:4")
        return value
    if isinstance(value, list) and len(value) <= 16 and all(
            isinstance(s, list) and len(s) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in s) for s in value):
        return ",".join(f"{float(a):g}:{float(b):g}" for a, b in value)
    raise RequestError("keep is spans in seconds: \"0:1.5,3:4\" or [[0, 1.5], [3, 4]]")


NO_RANKER = ("this server has no text-audio embedder to rank candidates with (start it with --rerank clap, or "
             "set eval.text_embedder in the recipe)")

FIELDS = ("prompt", "negative", "duration", "steps", "guidance", "seed", "sampler", "n", "rerank", "init_audio",
          "strength", "keep", "extend", "loudness")


# -- the studio -----------------------------------------------------------------------------------


class Studio:
    """A loaded pipeline behind a queue. :meth:`submit` checks a request and queues it (or
    refuses it: :class:`RequestError`, :class:`Busy`); one worker thread runs the queue."""

    def __init__(self, pipe: Any, out: Path, *, limits: Limits = Limits(), ranker: Any = None,
                 rerank_note: str | None = None, history: int = 100, ema: bool = True):
        self.pipe, self.out, self.limits, self.ranker = pipe, Path(out), limits, ranker
        self.rerank_note = rerank_note or NO_RANKER  # why there is no reranking, when there is none
        self.ema = ema
        self.history = history
        from ..commands.sample import check_out

        # checked once: writable, and any manifest there is sample's; its names are not taken again
        self._earlier = check_out(self.out, "the output folder")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._files: dict[str, Path] = {}  # name -> file of an output this studio wrote
        self._stop = False
        self._tmp = tempfile.TemporaryDirectory(prefix="tta-serve-")
        self._prefix = time.strftime("studio-%Y%m%d-%H%M%S")
        self._worker = threading.Thread(target=self._work, name="tta-serve-worker", daemon=True)
        self._worker.start()
        self.served = 0
        self.refused = 0

    # -- what the page shows --------------------------------------------------------------
    def info(self) -> dict:
        pipe = self.pipe
        d = pipe.defaults
        sampler = (d.get("sampler") or {}).get("type")
        return {
            "recipe": pipe.recipe.name, "recipe_path": str(pipe.recipe.path or ""),
            "run": str(pipe.run_dir) if pipe.run_dir is not None else None,
            "checkpoint": pipe.checkpoint, "ema": self.ema,
            "weights": {name: w.describe() for name, w in pipe.weights.items()},
            "device": str(pipe.device), "precision": pipe.precision,
            "sample_rate": pipe.sample_rate, "channels": pipe.audio.channels,
            "defaults": {"steps": int(d.get("steps", 50)), "guidance": float(d.get("guidance", 1.0)),
                         "duration": float(d.get("duration", pipe.audio.duration)), "seed": int(d.get("seed", 0)),
                         "sampler": sampler},
            "samplers": self.samplers(),
            "rerank": {"available": self.ranker is not None,
                       **({"embedder": self.ranker.name} if self.ranker is not None else {"why_not": self.rerank_note})},
            "audio_prompt": False,
            "limits": self.limits.describe(),
            "output_folder": str(self.out),
        }

    def samplers(self) -> list[str]:
        return list(self.pipe.registry.names("sampler"))

    def health(self) -> dict:
        with self._lock:
            return {"status": "ok", "busy": self._running is not None, "queued": len(self._queue),
                    "recipe": self.pipe.recipe.name, "checkpoint": self.pipe.checkpoint,
                    "served": self.served, "refused": self.refused}

    # -- requests -------------------------------------------------------------------------
    def check(self, body: Any) -> tuple[dict, Any, int, bool, Path | None]:
        """A request body checked against the limits and resolved to settings: (the request as
        shown back, SampleSettings, candidates, rerank, the upload's temporary file)."""
        if not isinstance(body, dict):
            raise RequestError("the request body is a JSON object: {\"prompt\": \"...\", ...}")
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(FIELDS)}")
        lim = self.limits
        prompt = _text(body, "prompt", lim.prompt_chars)
        if not prompt:
            raise RequestError("prompt is empty: say what to generate, e.g. {\"prompt\": \"a rising chirp\"}")
        negative = _text(body, "negative", lim.prompt_chars) or None
        steps = _number(body, "steps", int, lo=1, hi=lim.steps, hi_name=" on this server")
        duration = _number(body, "duration", float, hi=lim.duration, hi_name=" seconds on this server")
        if duration is not None and duration <= 0:
            raise RequestError(f"duration must be more than 0 seconds, got {duration:g}")
        extend = _number(body, "extend", float, hi=lim.duration, hi_name=" seconds on this server")
        n = _number(body, "n", int, lo=1, hi=lim.candidates, hi_name=" candidates on this server") or 1
        rerank = body.get("rerank", False)
        if not isinstance(rerank, bool):
            raise RequestError("rerank is true or false")
        if rerank and self.ranker is None:
            raise RequestError(f"rerank: {self.rerank_note}")
        if rerank and n < 2:
            raise RequestError("rerank keeps the best of n candidates: give n of 2 or more")
        sampler = body.get("sampler") or None
        if sampler is not None and (not isinstance(sampler, str) or sampler not in self.samplers()):
            raise RequestError(f"sampler {sampler!r} is not one of this server's: {', '.join(self.samplers())}")
        options = dict(
            steps=steps, guidance=_number(body, "guidance", float, lo=0, hi=100),
            seed=_number(body, "seed", int, lo=0, hi=2**63 - 1), sampler=sampler, duration=duration,
            negative=negative, strength=_number(body, "strength", float, lo=0, hi=1), keep=_keep(body.get("keep")),
            extend=extend, loudness=_number(body, "loudness", float, lo=-70, hi=0))
        upload, shown_upload = None, None
        if body.get("init_audio") not in (None, ""):
            data, kind, name = decode_upload(body["init_audio"], lim.upload_bytes)
            fd, tmp = tempfile.mkstemp(suffix=f".{kind}", dir=self._tmp.name)
            with open(fd, "wb") as f:
                f.write(data)
            upload, shown_upload = Path(tmp), {"name": name, "type": kind, "bytes": len(data)}
        try:
            st = self.pipe.settings(init_audio=str(upload) if upload else None, batch_size=n, **options)
            if st.duration > lim.duration + 1e-9:
                raise RequestError(f"duration is at most {lim.duration:g} seconds on this server; this request "
                                   f"makes {st.duration:g} s")
        except RequestError:
            self._drop(upload)
            raise
        except TtaError as exc:  # the sampling layer's checks, naming the request's fields
            self._drop(upload)
            raise RequestError(str(exc)) from None
        except Exception as exc:  # an upload the audio loader cannot read after all
            self._drop(upload)
            if upload is None:
                raise
            raise RequestError(f"init_audio cannot be used: {type(exc).__name__}: {exc}") from None
        shown = {"prompt": prompt, "negative": negative, "duration": st.duration, "steps": st.steps,
                 "guidance": st.guidance.scale, "seed": st.seed, "sampler": st.sampler.get("type"), "n": n,
                 "rerank": rerank, "init_audio": shown_upload, "strength": options["strength"],
                 "keep": options["keep"], "extend": extend, "loudness": options["loudness"]}
        return shown, st, n, rerank, upload

    def submit(self, body: Any) -> Job:
        """Check ``body`` and queue it; :class:`Busy` when the queue is full."""
        shown, st, n, rerank, upload = self.check(body)
        with self._lock:
            if self._stop:
                self._drop(upload)
                raise RequestError("the server is shutting down", 503)
            if len(self._queue) >= self.limits.queue:
                self.refused += 1
                self._drop(upload)
                raise Busy(f"busy: {len(self._queue)} generation(s) are waiting behind the running one (this "
                           f"server queues at most {self.limits.queue}); try again in a little while")
            job = Job(f"{self._prefix}-{next(self._ids):04d}", shown, st, n, rerank, upload=upload,
                      steps=st.steps, batches=1)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._trim()
            self._lock.notify_all()
        return job

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """0 while it runs or is finished, else 1 for the next to run, 2 behind it, ..."""
        with self._lock:
            try:
                return self._queue.index(job) + 1
            except ValueError:
                return 0

    def view(self, job: Job) -> dict:
        """A job as the API answers it."""
        out = {"id": job.id, "status": job.status, "position": self.position(job), "step": job.step,
               "steps": job.steps, "batch": job.batch, "batches": job.batches, "request": job.request,
               "outputs": job.outputs}
        if job.error:
            out["error"] = job.error
        if job.seconds is not None:
            out["seconds"] = round(job.seconds, 3)
        return out

    def recent(self, count: int = 20) -> list[dict]:
        """The latest finished generations, newest first."""
        with self._lock:
            done = [j for j in self._jobs.values() if j.status == "done"]
        return [self.view(j) for j in reversed(done[-count:])]

    def file(self, name: str) -> Path | None:
        """An output this studio wrote, by its file name; None for any other name."""
        with self._lock:
            return self._files.get(name)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            for job in self._queue:
                job.status, job.error = "error", "the server shut down before this generation ran"
                self._drop(job.upload)
                job.done.set()
            self._queue.clear()
            self._lock.notify_all()
        self._worker.join(timeout=600)
        self._tmp.cleanup()

    # -- the worker -----------------------------------------------------------------------
    def _trim(self) -> None:
        """Forget the oldest finished jobs beyond ``history`` (their files stay on disk)."""
        finished = [k for k, j in self._jobs.items() if j.done.is_set()]
        for key in finished[:max(0, len(finished) - self.history)]:
            for output in self._jobs.pop(key).outputs:
                for name in (output["file"], output["spectrogram"]):
                    self._files.pop(name, None)

    @staticmethod
    def _drop(upload: Path | None) -> None:
        if upload is not None:
            upload.unlink(missing_ok=True)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop:
                    self._lock.wait()
                if self._stop and not self._queue:
                    return
                job = self._queue.popleft()
                self._running = job
                job.status = "running"
            started = time.perf_counter()
            try:
                self._run(job)
                job.status = "done"
                self.served += 1
            except TtaError as exc:
                job.status, job.error = "error", str(exc)
            except Exception as exc:  # the server keeps serving; the job says what happened
                log.exception("generation %s failed", job.id)
                job.status, job.error = "error", f"the generation failed: {type(exc).__name__}: {exc}"
            finally:
                job.seconds = time.perf_counter() - started
                self._drop(job.upload)
                with self._lock:
                    self._running = None
                    job.done.set()
                    self._trim()

    def _run(self, job: Job) -> None:
        from ..commands.sample import write_samples

        def progress(step: int, steps: int, batch: int, batches: int) -> None:
            job.step, job.steps, job.batch, job.batches = step, steps, batch, batches

        written = write_samples(self.pipe, [(job.id, job.request["prompt"])], job.settings, self.out, self._earlier,
                                n=job.n, ranker=self.ranker if job.rerank else None, ema=self.ema, progress=progress,
                                memory_check=True)
        outputs = []
        with self._lock:
            for row in written.rows:
                for name in (row["file"], row["spectrogram"]):
                    self._files[name] = self.out / name
                outputs.append({"file": row["file"], "spectrogram": row["spectrogram"],
                                "audio_url": f"/files/{row['file']}", "spectrogram_url": f"/files/{row['spectrogram']}",
                                "manifest_url": f"/api/manifest/{job.id}/{len(outputs)}", "manifest": row})
            job.outputs = outputs
