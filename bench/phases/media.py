"""The media phase: media downloads/s and the worker's peak RSS while a 100 MB document downloads
(:mod:`bench.media`), on a fresh pipeline."""

from __future__ import annotations

from bench import media as measure
from bench.drive import fresh_pipeline
from bench.system import Bench, log


async def media(b: Bench) -> None:
    b.ensure_fake_meta()
    await fresh_pipeline(b)
    images = 50 if b.plan.name == "quick" else 300
    log(f"media: {images} images downloaded at once, then one 100 MB document with the worker's RSS sampled")
    result = await measure.measure(b.db_url, b.url("serve", "/webhooks/whatsapp"),
                                   b.url("fake-meta"), b.secret,
                                   b.children["worker"].pid, images=images, timeout_s=180)
    b.results["media"] = result
    log(f"media: {result['downloads_per_s']:.0f} downloads/s ({result['stored']} of {images}); 100 MB "
        f"document in {result['document_seconds']:.1f}s, worker RSS {result['worker_rss_before'] / 2**20:.0f}"
        f" → {result['worker_rss_peak'] / 2**20:.0f} MiB at the peak")
