"""`tta-run RECIPE serve`: the HTTP API and its limits, against a server on a free loopback
port over the tiny trained quickstart run (tests/conftest.py: tiny_run)."""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.yaml"


def _overrides(args):
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


@pytest.fixture(scope="module")
def pipe(tiny_run):
    from tta_core.sampling import load_pipeline

    args, root = tiny_run
    return load_pipeline(RECIPE, run_dir=root / "run", device="cpu", overrides=_overrides(args))


LIMITS = dict(prompt_chars=100, duration=2.0, steps=20, candidates=3, upload_bytes=2**20, queue=2)


@pytest.fixture(scope="module")
def server(pipe, tmp_path_factory):
    """A studio served on a free loopback port: (base URL, studio, output folder)."""
    from tta_core.serving import Limits, Studio, start

    out = tmp_path_factory.mktemp("studio") / "out"
    studio = Studio(pipe, out, limits=Limits(**LIMITS))
    srv, thread = start(studio, "127.0.0.1", 0)
    yield srv.url.rstrip("/"), studio, out
    srv.shutdown()
    srv.server_close()
    studio.close()


def call(base, path, body=None, *, raw=None, headers=None, method=None):
    """(status, headers, body bytes) of one request; errors are answers too."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def jcall(base, path, body=None, **kw):
    status, headers, data = call(base, path, body, **kw)
    return status, json.loads(data)


def _wav(seconds=0.5, rate=16000, fmt="WAV"):
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format=fmt)
    return buf.getvalue()


def test_health_info_and_samplers_say_what_is_served(server, pipe):
    base, studio, out = server
    status, health = jcall(base, "/api/health")
    assert status == 200 and health["status"] == "ok" and health["recipe"] == "quickstart"
    status, info = jcall(base, "/api/info")
    assert status == 200
    assert info["recipe"] == "quickstart" and info["checkpoint"] == pipe.checkpoint
    assert info["checkpoint"].endswith(tuple(f"step-{n:08d}" for n in range(1, 10)))
    assert Path(info["run"]) == pipe.run_dir
    assert info["limits"]["steps"] == 20 and info["limits"]["candidates"] == 3
    assert info["rerank"]["available"] is False and "--rerank" in info["rerank"]["why_not"]
    status, samplers = jcall(base, "/api/samplers")
    assert status == 200 and {"ddim", "ddpm"} <= set(samplers["samplers"])
    assert samplers["samplers"] == list(pipe.registry.names("sampler")) and samplers["default"] == "ddim"
    status, headers, page = call(base, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="prompt"' in page and b"/api/generate" in page
    assert b"http://" not in page and b"https://" not in page  # nothing fetched from elsewhere


def test_generate_returns_the_audio_and_manifest_line_of_tta_run_sample(server, tiny_run, tmp_path):
    """The server's output for a seed is the CLI's output for it: same samples, same manifest."""
    from tta_core.cli import main

    base, studio, out = server
    request = {"prompt": "a rising chirp", "steps": 3, "seed": 11, "guidance": 2.0, "duration": 0.5}
    status, job = jcall(base, "/api/generate", request)
    assert status == 200 and job["status"] == "done", job
    assert job["step"] == 3 and job["steps"] == 3
    [output] = job["outputs"]
    line = output["manifest"]
    assert line["prompt"] == "a rising chirp" and line["seed"] == 11 and line["steps"] == 3
    assert line["duration"] == 0.5 and line["guidance"] == 2.0 and line["recipe"] == "quickstart"
    status, headers, wav = call(base, output["audio_url"])
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    served, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate == line["sample_rate"] and len(served) == int(0.5 * rate)
    status, headers, png = call(base, output["spectrogram_url"])
    assert status == 200 and png.startswith(b"\x89PNG")
    # on disk, with the manifest line the API gave
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert line in rows and (out / line["file"]).is_file()
    status, headers, got = call(base, output["manifest_url"])
    assert status == 200 and json.loads(got) == line and "attachment" in headers["Content-Disposition"]

    args, root = tiny_run
    cli_out = tmp_path / "cli"
    assert main([str(RECIPE), "sample", *args, "--out", str(cli_out), "--text", "a rising chirp", "--steps", "3",
                 "--seed", "11", "--guidance", "2", "--duration", "0.5"]) == 0
    [cli_line] = [json.loads(x) for x in (cli_out / "manifest.jsonl").read_text().splitlines()]
    cli_wave, _ = soundfile.read(cli_out / cli_line["file"], dtype="float32")
    np.testing.assert_array_equal(served, cli_wave)
    same = {k: v for k, v in cli_line.items() if k not in ("file", "spectrogram")}
    assert same == {k: v for k, v in line.items() if k not in ("file", "spectrogram")}


def test_generate_as_wav_and_polled_jobs_report_progress(server):
    base, studio, out = server
    status, headers, wav = call(base, "/api/generate?format=wav", {"prompt": "a low hum", "steps": 2})
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    line = json.loads(headers["X-TTA-Manifest"])
    assert line["prompt"] == "a low hum" and line["steps"] == 2
    assert soundfile.read(io.BytesIO(wav))[0].shape[0] > 0

    status, job = jcall(base, "/api/generate?wait=0", {"prompt": "ticking", "steps": 4, "n": 2})
    assert status == 202 and job["status"] in ("queued", "running", "done")
    seen = set()
    for _ in range(1200):
        status, job = jcall(base, f"/api/jobs/{job['id']}")
        assert status == 200
        seen.add((job["status"], job["step"]))
        if job["status"] in ("done", "error"):
            break
        time.sleep(0.05)
    assert job["status"] == "done" and job["step"] == job["steps"] == 4
    assert len(job["outputs"]) == 2  # two candidates, both kept (no reranking here)
    assert [o["manifest"]["batch_index"] for o in job["outputs"]] == [0, 1]
    status, history = jcall(base, "/api/history")
    assert history["generations"][0]["id"] == job["id"]


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "x" * 101}, 400, "at most 100"),
    ({"prompt": "  "}, 400, "prompt is empty"),
    ({"prompt": "a", "steps": 21}, 400, "steps is at most 20"),
    ({"prompt": "a", "steps": 2.5}, 400, "whole number"),
    ({"prompt": "a", "duration": 60}, 400, "duration is at most 2"),
    ({"prompt": "a", "duration": 0.001}, 400, "too short"),
    ({"prompt": "a", "n": 4}, 400, "at most 3 candidates"),
    ({"prompt": "a", "rerank": True, "n": 2}, 400, "--rerank clap"),
    ({"prompt": "a", "sampler": "no_such"}, 400, "ddim"),
    ({"prompt": "a", "seed": -1}, 400, "seed must be at least 0"),
    ({"prompt": "a", "guidance": "lots"}, 400, "guidance must be a number"),
    ({"prompt": "a", "strength": 0.5}, 400, "init_audio"),
    ({"prompt": "a", "keep": "../../etc"}, 400, "keep is spans"),
    ({"prompt": "a", "loudness": 3}, 400, "loudness"),
    ({"prompt": "a", "path": "/etc/passwd"}, 400, "unknown field"),
    (["a"], 400, "JSON object"),
    ({"prompt": "a", "init_audio": "not base64!"}, 400, "not valid base64"),
    ({"prompt": "a", "init_audio": base64.b64encode(b"%PDF-1.4 hello").decode()}, 415, "not an audio file"),
    ({"prompt": "a", "init_audio": {"name": "broken.wav", "data": base64.b64encode(
        b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x00" * 40).decode()}}, 400, "cannot be read"),
    ({"prompt": "a", "init_audio": base64.b64encode(_wav(32.9)).decode()}, 413, "upload limit of 1 MB"),
    ({"prompt": "a", "init_audio": base64.b64encode(_wav(40)).decode()}, 413, "request is 1.6 MB"),
])
def test_bad_requests_are_refused_with_a_clear_message_and_nothing_written(server, body, status, words):
    base, studio, out = server
    before = sorted(p.name for p in out.iterdir()) if out.exists() else []
    got, answer = jcall(base, "/api/generate", body)
    assert got == status and words in answer["error"], answer
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else []) == before
    assert not any(Path(studio._tmp.name).iterdir())  # no upload left behind
    assert jcall(base, "/api/health")[0] == 200


def test_malformed_http_is_refused_and_the_server_keeps_serving(server):
    base, studio, out = server
    assert call(base, "/api/generate", raw=b"{not json")[0] == 400
    assert call(base, "/api/generate", raw=b"prompt=a", headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    assert call(base, "/api/generate", raw=b"x" * (2**20 * 4 // 3 + 2**16 + 1))[0] == 413
    assert call(base, "/api/nothing")[0] == 404
    assert call(base, "/api/generate", method="GET")[0] == 404
    for path in ("/files/../../etc/passwd", "/files/manifest.jsonl", "/files/%2e%2e%2fetc%2fpasswd", "/files/",
                 "/api/jobs/../x", "/api/manifest/nope/0"):
        assert call(base, path)[0] == 404, path
    status, job = jcall(base, "/api/generate", {"prompt": "still serving", "steps": 1})
    assert status == 200 and job["status"] == "done"


def test_an_init_audio_upload_is_varied_and_never_becomes_a_path(server):
    base, studio, out = server
    upload = {"name": "../../../tmp/evil.wav", "data": "data:audio/wav;base64," + base64.b64encode(_wav(0.6)).decode()}
    status, job = jcall(base, "/api/generate", {"prompt": "a low hum", "steps": 4, "strength": 0.5,
                                                "init_audio": upload})
    assert status == 200 and job["status"] == "done", job
    line = job["outputs"][0]["manifest"]
    assert line["strength"] == 0.5 and line["duration"] == pytest.approx(0.6, abs=0.01)
    assert job["request"]["init_audio"]["name"] == "../../../tmp/evil.wav"  # shown, not used
    assert not Path("/tmp/evil.wav").exists() and not any(Path(studio._tmp.name).iterdir())
    assert line["file"].startswith("studio-") and "/" not in line["file"]


def test_one_generation_at_a_time_others_wait_in_order_and_a_full_queue_is_busy(server, monkeypatch):
    base, studio, out = server
    release = threading.Event()
    started = threading.Event()
    real = studio.pipe.batches

    def held(*args, **kwargs):  # the first generation waits until released
        started.set()
        release.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(studio.pipe, "batches", held)
    answers = {}

    def client(k):
        answers[k] = jcall(base, "/api/generate", {"prompt": f"request {k}", "steps": 1, "seed": k})

    first = threading.Thread(target=client, args=(0,))
    first.start()
    assert started.wait(60)
    waiting = [jcall(base, "/api/generate?wait=0", {"prompt": f"queued {k}", "steps": 1})[1] for k in range(2)]
    assert [studio.position(studio.job(j["id"])) for j in waiting] == [1, 2]
    assert [j["position"] for j in waiting] == [1, 2]
    status, refused = jcall(base, "/api/generate", {"prompt": "one too many", "steps": 1})
    assert status == 503 and refused["status"] == "busy" and "busy" in refused["error"]
    health = jcall(base, "/api/health")[1]
    assert health["busy"] is True and health["queued"] == 2
    release.set()
    first.join(120)
    assert answers[0][0] == 200 and answers[0][1]["status"] == "done"
    for j in waiting:
        assert studio.job(j["id"]).done.wait(120) and studio.job(j["id"]).status == "done"
    order = [studio.job(j["id"]).outputs[0]["manifest"]["prompt"] for j in waiting]
    assert order == ["queued 0", "queued 1"]


def test_a_failing_generation_is_an_error_answer_and_the_next_one_runs(server, monkeypatch):
    base, studio, out = server
    real = studio.pipe.batches
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(studio.pipe, "batches", broken)
    status, job = jcall(base, "/api/generate", {"prompt": "fails", "steps": 1})
    assert status == 500 and job["status"] == "error" and "out of memory (simulated)" in job["error"]
    status, job = jcall(base, "/api/generate", {"prompt": "works", "steps": 1})
    assert status == 200 and job["status"] == "done"


def test_loopback_is_told_from_other_addresses():
    from tta_core.serving import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def _interruptible() -> None:
    """Ctrl-C reaches the server as at a terminal: a suite started in the background by a
    shell without job control runs with SIGINT ignored, and its children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_tta_run_serve_listens_on_loopback_and_stops_on_ctrl_c(tiny_run, tmp_path):
    args, root = tiny_run
    args = [a for a in args if a != "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    proc = subprocess.Popen([sys.executable, "-m", "tta_core.cli", str(RECIPE), "serve", *args, "--port", "0",
                             "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_interruptible)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving quickstart (run "), line + proc.stderr.read()
        url = line.rsplit(" at ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:")
        status, health = jcall(url.rstrip("/"), "/api/health")
        assert status == 200 and health["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "warning" not in err


def test_serve_refuses_a_port_in_use_and_warns_off_loopback(pipe, tmp_path, capsys):
    import socket

    from tta_core.errors import UsageError
    from tta_core.serving import Studio, serve_forever

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match="--port"):
            serve_forever(Studio(pipe, tmp_path / "a"), "127.0.0.1", port)
        with pytest.raises(UsageError):
            serve_forever(Studio(pipe, tmp_path / "b"), "192.0.2.1", port)  # not this machine's: cannot bind
    assert "warning: serving on 192.0.2.1" in capsys.readouterr().err


@pytest.mark.slow
def test_candidates_are_reranked_where_the_server_has_a_text_audio_embedder(pipe, tiny_clap, tmp_path):
    from tta_core.eval.rerank import ranker
    from tta_core.serving import Studio, start

    spec = f"{{type: clap, pretrained: {tiny_clap}, tmodel: transformer}}"
    studio = Studio(pipe, tmp_path / "out", ranker=ranker(spec, pipe.registry, recipe=pipe.recipe))
    srv, _ = start(studio, "127.0.0.1", 0)
    base = srv.url.rstrip("/")
    try:
        info = jcall(base, "/api/info")[1]
        assert info["rerank"] == {"available": True, "embedder": studio.ranker.name}
        status, job = jcall(base, "/api/generate", {"prompt": "white noise", "n": 3, "rerank": True, "steps": 2})
        assert status == 200 and job["status"] == "done", job
        [output] = job["outputs"]  # the best of three kept
        record = output["manifest"]["rerank"]
        assert len(record["scores"]) == 3 and record["chosen"] == max(range(3), key=record["scores"].__getitem__)
        status, job = jcall(base, "/api/generate", {"prompt": "white noise", "n": 2, "steps": 2})
        assert status == 200 and len(job["outputs"]) == 2  # without rerank: every candidate
    finally:
        srv.shutdown()
        srv.server_close()
        studio.close()


def test_a_sampler_an_installed_plugin_registers_is_offered_and_used(tiny_run, fake_dists, tmp_path):
    from tta_core.sampling import load_pipeline
    from tta_core.serving import Studio, start

    fake_dists("tta-more-samplers", "0.1", {"more": """
        from tta_core.plugin import hookimpl

        @hookimpl
        def tta_register(register):
            register("sampler", "ddim_again", "tta_core.diffusion.samplers:DDIM")
    """})
    args, root = tiny_run
    pipe = load_pipeline(RECIPE, run_dir=root / "run", device="cpu", overrides=_overrides(args))
    studio = Studio(pipe, tmp_path / "out")
    srv, _ = start(studio, "127.0.0.1", 0)
    base = srv.url.rstrip("/")
    try:
        assert "ddim_again" in jcall(base, "/api/samplers")[1]["samplers"]
        status, job = jcall(base, "/api/generate", {"prompt": "a low hum", "steps": 2, "sampler": "ddim_again"})
        assert status == 200 and job["outputs"][0]["manifest"]["sampler"]["type"] == "ddim_again"
    finally:
        srv.shutdown()
        srv.server_close()
        studio.close()
