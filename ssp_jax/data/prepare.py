"""Generate the micro world's training inputs into a workdir: corpus, answer list and index.

Built once and reused (the index manifest is written last, so an interrupted build is redone).
The answer list carries example questions for the proposer prompt, phrased in the style the
held-out benchmark does not use: no SSP step ever sees a held-out question.
"""

from __future__ import annotations

import json
from pathlib import Path

from ssp_jax.data.microworld import World, WorldConfig
from ssp_jax.retrieval.build import build
from ssp_jax.retrieval.index import MANIFEST

ANSWERS_FILE, CORPUS_FILE, INDEX_DIR = "answers.jsonl", "corpus.jsonl", "index"


def prepare_microworld(out_dir: str | Path, config: WorldConfig = WorldConfig(), *, num_examples: int = 3,
                       index_kind: str = "bm25") -> tuple[Path, Path]:
    """(answers jsonl, index directory) of the world of `config`, written under `out_dir`."""
    out_dir = Path(out_dir)
    answers, index = out_dir / ANSWERS_FILE, out_dir / INDEX_DIR
    if (index / MANIFEST).is_file() and answers.is_file():
        return answers, index
    world = World(config)
    corpus = world.write_corpus(out_dir / CORPUS_FILE)
    examples = [q.question for q in world.example_questions(max(num_examples, 1) * 3)]
    with answers.open("w", encoding="utf-8") as f:
        for i, record in enumerate(world.answers()):
            picked = [examples[(i + j) % len(examples)] for j in range(num_examples)]
            f.write(json.dumps({**record, "examples": picked}) + "\n")
    build(corpus, index, kind=index_kind, progress=False)
    return answers, index
