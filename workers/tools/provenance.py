"""What a distilled model was trained on, written beside it by `rankstream distill`, so that
`rankstream tune` never fits or judges a plan on queries its scorer has already seen.

A model scores the queries it was trained on better than any other: a tune that fits
interpolation weights and chooses depths on them trusts the model more than held-out
queries will, and can choose a plan that scores below its own input on them (the README's
"Tuned plans" shows it on SciFact). Queries are matched by text, so a record follows the
queries whatever folder or ids a collection has.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ValidationError

from rankstream.workers.tools.errors import UsageError

TRAINING_FILE = "rankstream-training.json"


class TrainingQueries(BaseModel):
    """The queries a model was trained on.

    Attributes:
        collection: the data folder's name, for people reading the file.
        split: the qrels split the queries came from.
        queries: query id to query text.
    """

    collection: str
    split: str
    queries: dict[str, str]


def record_training(model_dir: Path, data_dir: Path, split: str, queries: dict[str, str]) -> Path:
    """Write the record of `queries` (id to text) beside the model in `model_dir`."""
    record = TrainingQueries(collection=data_dir.resolve().name, split=split, queries=queries)
    path = model_dir / TRAINING_FILE
    path.write_text(record.model_dump_json(indent=1) + "\n")
    return path


def trained_texts(model: str) -> set[str]:
    """The texts of the queries the model at `model` was trained on: read from its folder, or
    from the folder above (a student's `onnx-int8/`). Empty for a model without a record (a
    packaged or hub model, or one trained elsewhere).

    Raises UsageError for a record that cannot be read: remove or repair the file."""
    folder = Path(model).expanduser()
    for path in (folder / TRAINING_FILE, folder.parent / TRAINING_FILE):
        if path.is_file():
            try:
                return set(TrainingQueries.model_validate_json(path.read_text()).queries.values())
            except (OSError, ValidationError) as error:
                raise UsageError(f"{path}: not a training record ({error})") from error
    return set()
