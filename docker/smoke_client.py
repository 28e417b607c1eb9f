"""The HTTP half of docker/smoke.sh: talks to the running container with the standard library only.

    python3 docker/smoke_client.py http://127.0.0.1:18000 --ready-timeout 120

Waits for /healthz and /readyz, classifies a PNG made here (raw body and multipart), checks the
JSON error of an unsupported content type, and reads /metrics back; exits non-zero with a reason
on the first thing that is wrong.
"""

import argparse
import json
import re
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib


def png(width: int = 32, height: int = 32) -> bytes:
    """An RGB gradient PNG, written by hand so the host needs no Pillow."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + b"".join(bytes((8 * x % 256, 8 * y % 256, 128)) for x in range(width)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def request(url: str, data: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
    headers = {"content-type": content_type} if content_type else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_ready(base: str, timeout_s: float) -> float:
    start = time.monotonic()
    while True:
        try:
            if request(base + "/readyz")[0] == 200:
                return time.monotonic() - start
        except OSError:  # not listening yet
            pass
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"/readyz did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.5)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"smoke: {message}")


def classify(base: str) -> dict:
    status, body = request(base + "/classify?top_k=3", png(), "image/png")
    check(status == 200, f"POST /classify (image/png) answered {status}: {body[:300]!r}")
    answer = json.loads(body)
    for key in ("model", "version", "label", "class_id", "confidence", "top_k", "exit", "gflops", "threshold"):
        check(key in answer, f"/classify response lacks {key!r}: {answer}")
    check(0 <= answer["exit"]["index"] < answer["exit"]["count"], f"exit out of range: {answer['exit']}")
    check(0 < answer["gflops"]["used"] <= answer["gflops"]["full"], f"implausible gflops: {answer['gflops']}")
    check(1 <= len(answer["top_k"]) <= 3, f"top_k=3 gave {answer['top_k']}")
    check(answer["top_k"][0]["class_id"] == answer["class_id"], f"top_k does not start with the answer: {answer}")

    boundary = "smoke-boundary"
    form = (
        (
            f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="x.png"\r\n'
            "content-type: image/png\r\n\r\n"
        ).encode()
        + png(17, 23)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, body = request(base + "/classify?mode=fast", form, f"multipart/form-data; boundary={boundary}")
    check(status == 200, f"POST /classify (multipart) answered {status}: {body[:300]!r}")

    status, body = request(base + "/classify", b"not an image", "text/plain")
    check(status == 415, f"an unsupported content type answered {status}, not 415")
    check(json.loads(body).get("error", {}).get("code") is not None, f"error body is not JSON error: {body!r}")
    return answer


def sample(metrics: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in metrics.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total, found = total + float(match.group(2)), True
    check(found, f"/metrics has no {name}{labels or ''}")
    return total


def check_metrics(base: str) -> None:
    status, body = request(base + "/metrics")
    check(status == 200, f"GET /metrics answered {status}")
    text = body.decode()
    check(sample(text, "dynadapter_requests_total", code="200") >= 2, "the two 200s are not counted")
    check(sample(text, "dynadapter_requests_total", code="415") >= 1, "the 415 is not counted")
    check(sample(text, "dynadapter_exits_total") >= 2, "exits are not counted")
    check(sample(text, "dynadapter_flops_used_total") > 0, "no FLOPs used counted")
    sample(text, "dynadapter_request_duration_seconds_count")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args = parser.parse_args()
    base = args.base_url.rstrip("/")
    waited = wait_ready(base, args.ready_timeout)
    check(request(base + "/healthz")[0] == 200, "/healthz is not 200")
    answer = classify(base)
    check_metrics(base)
    print(
        f"smoke: ready after {waited:.1f} s; {answer['model']} v{answer['version']} said {answer['label']!r} "
        f"(confidence {answer['confidence']:.2f}) at exit {answer['exit']['index']}/{answer['exit']['count']}, "
        f"{answer['gflops']['used']:.3g} of {answer['gflops']['full']:.3g} GFLOPs; /metrics OK",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
