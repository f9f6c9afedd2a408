"""A larger (or smaller) copy of a ``sequences`` dataset, to test the pipeline at a given scale.

    python benchmarks/scaled_dataset.py --data ../shared/data/amazon-beauty --users 50000 --items 17000 --out /tmp/beauty-50k

Nothing here is real data: it is Beauty's structure at another size. Extra items are copies of
popular items (title suffixed " (edition 2)", id suffixed "-2"); extra users are copies of real
users' sequences in which each item that has a copy is swapped for it with probability 3/4. So
the copies keep Beauty's lengths, popularity curve and co-purchase structure, and every copy item
has enough interactions to survive the 5-core filter. Fewer users than the original: a seeded
sample of them. Seeded: the same arguments give the same files.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

COPY_MIN_COUNT = 8  # only items this popular are copied, and a copy takes SWAP of their share in
SWAP = 0.75  # the copied users: so at 50k users nearly every copy keeps >= 5 interactions (5-core)


def read(folder: Path) -> tuple[list[list[str]], dict[str, dict]]:
    users = [line.split() for line in (folder / "sequences.txt").read_text().splitlines() if line.strip()]
    items = {row["item_id"]: row for row in map(json.loads, (folder / "items.jsonl").read_text().splitlines()) if row}
    return users, items


def scale(users: list[list[str]], items: dict[str, dict], n_users: int, n_items: int, seed: int) -> tuple[list[list[str]], dict[str, dict]]:
    rng = np.random.default_rng(seed)
    if n_users <= len(users):
        return [users[i] for i in sorted(rng.choice(len(users), n_users, replace=False))], items
    counts = Counter(item for seq in users for item in seq[1:])
    popular = sorted(item for item, c in counts.items() if c >= COPY_MIN_COUNT)
    extra = max(0, n_items - len(items))
    if extra > len(popular):
        raise SystemExit(f"only {len(popular)} items have >= {COPY_MIN_COUNT} interactions: cannot add {extra} copies")
    copied = {item: f"{item}-2" for item in rng.choice(popular, extra, replace=False)}
    out_items = dict(items)
    for item, copy in copied.items():
        row = dict(items[item], item_id=copy)
        row["title"] = f"{row.get('title', item)} (edition 2)"
        out_items[copy] = row
    out_users = list(users)
    for k, source in enumerate(rng.integers(0, len(users), n_users - len(users))):
        uid, *seq = users[source]
        swap = rng.random(len(seq)) < SWAP
        out_users.append([f"{uid}-{k}"] + [copied[i] if s and i in copied else i for i, s in zip(seq, swap)])
    return out_users, out_items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--items", type=int, default=0, help="items wanted (0: as many as the original)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    users, items = scale(*read(args.data), args.users, args.items, args.seed)
    used = {item for seq in users for item in seq[1:]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sequences.txt").write_text("".join(" ".join(seq) + "\n" for seq in users))
    (args.out / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for item, row in items.items() if item in used))
    print(f"{args.out}: {len(users)} users, {len(used)} items, {sum(len(s) - 1 for s in users)} interactions (before the 5-core filter)")


if __name__ == "__main__":
    main()
