"""Mutations of a .tflite file for robustness tests: byte flips, truncation, zeroed and shuffled spans."""

import random


def mutations(raw, count, seed=0):
    """Yields ``(kind, mutated_bytes)`` pairs, deterministic for a seed."""
    rng = random.Random(seed)
    kinds = ("flip", "flip_header", "truncate", "zero_span", "duplicate_span", "random_span")
    for i in range(count):
        kind = kinds[i % len(kinds)]
        data = bytearray(raw)
        if kind == "flip":
            for _ in range(rng.randint(1, 32)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "flip_header":
            # The root table, vtables and offsets live near the start: the fragile part.
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(min(256, len(data)))] = rng.randrange(256)
        elif kind == "truncate":
            data = data[: rng.randrange(len(data))]
        elif kind == "zero_span":
            start = rng.randrange(len(data))
            n = min(rng.randint(4, 512), len(data) - start)
            data[start: start + n] = bytes(n)
        elif kind == "duplicate_span":
            start = rng.randrange(len(data))
            span = data[start: start + rng.randint(8, 256)]
            at = rng.randrange(len(data))
            data[at: at + len(span)] = span
        else:
            start = rng.randrange(len(data))
            n = min(rng.randint(4, 64), len(data) - start)
            data[start: start + n] = bytes(rng.randrange(256) for _ in range(n))
        yield kind, bytes(data)
