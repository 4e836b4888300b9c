"""Datasets: readers (chat, prompt/completion, text), formatting with label masks, padding collator."""

from .collate import PaddingCollator
from .formatting import (
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    Example,
    encode_record,
    encode_records,
    record_segments,
)
from .readers import RECORD_KINDS, Record, read_records
from .tasks import (
    TASKS,
    MultipleChoiceExample,
    Task,
    get_task,
    mc_examples_from_records,
    stdlib_module_task,
)

__all__ = [
    "CHATML_TEMPLATE",
    "IGNORE_INDEX",
    "RECORD_KINDS",
    "Example",
    "PaddingCollator",
    "Record",
    "encode_record",
    "encode_records",
    "read_records",
    "record_segments",
    "TASKS",
    "MultipleChoiceExample",
    "Task",
    "get_task",
    "mc_examples_from_records",
    "stdlib_module_task",
]
