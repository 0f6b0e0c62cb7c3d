"""Search latency over 10,000 synthetic catalogue entries; prints one JSON object.

For: checking that ``catalogue.search.SearchIndex`` stays well under the 50 ms per query target, for a
fixed set of queries (common words, a prefix, a repo id, a one-letter worst case, a miss) under each sort.
The entries are random but seeded, so runs compare. Not for: Hub or thumbnail timing.

Usage: ``python bench/search.py [--entries 10000] [--repeats 30] [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from catalogue.entries import CatalogueEntry
from catalogue.search import SORTS, SearchIndex

TARGET_MS = 50.0
STYLES = [
    "pixel",
    "art",
    "anime",
    "watercolor",
    "ink",
    "sketch",
    "neon",
    "glow",
    "retro",
    "vintage",
    "cyberpunk",
    "fantasy",
    "portrait",
    "photo",
    "realistic",
    "cartoon",
    "comic",
    "lego",
    "clay",
    "origami",
    "paper",
    "cut",
    "oil",
    "painting",
    "charcoal",
    "graffiti",
    "mosaic",
    "stained",
    "glass",
    "tintin",
    "ghibli",
    "manga",
    "low",
    "poly",
    "voxel",
    "isometric",
    "cinematic",
    "film",
    "noir",
    "pastel",
    "vaporwave",
    "steampunk",
]
TAGS = ["text-to-image", "stable-diffusion", "lora", "diffusers", "template:sd-lora", "stable-diffusion-xl"]
# Plus, at run time, the owner and first word of one real synthetic repo id (a repo-id style query).
QUERIES = ["", "pixel", "pixel art", "anime style xl", "water", "a", "Neon-Glow", "zzzz nope"]


def synthetic_entries(n: int, seed: int) -> list[CatalogueEntry]:
    """``n`` plausible entries: repo ids, titles and triggers from a style vocabulary, skewed popularity."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(STYLES, rng.randint(1, 3))
        name = "-".join(words) + rng.choice(["-xl", "-sdxl", "-lora", "", f"-v{rng.randint(1, 5)}"])
        repo_id = f"owner{rng.randint(0, n // 8)}/{name}-{i}"
        day = rng.randint(0, 900)
        out.append(
            CatalogueEntry(
                repo_id=repo_id,
                title=" ".join(w.capitalize() for w in words) + (" XL" if rng.random() < 0.5 else ""),
                trigger_words=" ".join(rng.sample(STYLES, 2)) + " style" if rng.random() < 0.8 else None,
                weight_name=f"{name}.safetensors",
                unservable_reason=None,
                thumbnail=f"http://hub.local/{repo_id}/resolve/main/images/a.png",
                downloads=int(rng.lognormvariate(4, 2)),
                likes=int(rng.lognormvariate(1, 1.5)),
                last_modified=f"{2023 + day // 365}-{1 + day % 365 // 31:02d}-{1 + day % 28:02d}T12:00:00Z",
                license=rng.choice(["openrail++", "creativeml-openrail-m", "mit", None]),
                gated=None,
                tags=tuple(rng.sample(TAGS, 4)) + ("base_model:adapter:stabilityai/stable-diffusion-xl-base-1.0",),
                base_models=("stabilityai/stable-diffusion-xl-base-1.0",),
                source="hub",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000, help="synthetic entries (default 10000)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per query and sort (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()

    entries = synthetic_entries(args.entries, args.seed)
    t0 = time.perf_counter()
    index = SearchIndex(entries)
    build_ms = (time.perf_counter() - t0) * 1000

    queries = QUERIES + [entries[42].repo_id.split("-")[0]]
    results = []
    all_samples: list[float] = []
    for query in queries:
        for sort in SORTS:
            index.search(query, sort=sort, limit=50)  # warm-up
            samples = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                page = index.search(query, sort=sort, limit=50)
                samples.append((time.perf_counter() - t) * 1000)
            samples.sort()
            all_samples += samples
            results.append(
                {
                    "query": query,
                    "sort": sort,
                    "total": page.total,
                    "median_ms": round(statistics.median(samples), 3),
                    "p95_ms": round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 3),
                }
            )
    all_samples.sort()
    worst_p95 = max(r["p95_ms"] for r in results)
    print(
        json.dumps(
            {
                "entries": args.entries,
                "seed": args.seed,
                "repeats": args.repeats,
                "index_build_ms": round(build_ms, 1),
                "results": results,
                "overall_median_ms": round(statistics.median(all_samples), 3),
                "overall_p95_ms": round(all_samples[int(0.95 * (len(all_samples) - 1))], 3),
                "worst_p95_ms": worst_p95,
                "target_ms": int(TARGET_MS),
                "pass": worst_p95 < TARGET_MS,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
