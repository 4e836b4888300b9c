"""All OLMo family knowledge lives in ``olmokit/family.py``.

Every other module under ``src/olmokit`` is parsed (code only: comments and docstrings may explain HF
names) and must not

* import ``transformers.models.olmo*`` (in any spelling, including ``importlib`` strings);
* access an OLMo/HF submodule attribute (``.self_attn``, ``.q_proj``, ``.layers``, ...) on anything;
* pass such a name as a string to ``getattr``/``hasattr``/``setattr``/``delattr``/``get_submodule``.

The one exception is the adapter's own accessor API: ``adapter.o_proj(3)``, ``self.adapter.lm_head()``
(a receiver whose name ends in ``adapter``) is how code is *meant* to reach those modules. And an
object's own field that merely shares a name (``self.layers = [...]`` assigned in the same class) is
not an HF submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "olmokit"
ALLOWED_FILE = SRC / "family.py"

FORBIDDEN_ATTRS = frozenset(
    {
        "self_attn",
        "mlp",
        "input_layernorm",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        "q_norm",
        "k_norm",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "embed_tokens",
        "lm_head",
        "variance_epsilon",
        "layers",
    }
)
NAME_TAKING_CALLS = frozenset({"getattr", "hasattr", "setattr", "delattr", "get_submodule"})
OLMO_MODELING = "transformers.models.olmo"


def _receiver_name(node: ast.expr) -> str:
    """The last name of an attribute's receiver: ``adapter`` for ``self.adapter.o_proj``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _own_fields(tree: ast.Module) -> dict[ast.ClassDef, set[str]]:
    """Per class: the names it assigns as ``self.<name> = ...`` (its own fields)."""
    fields: dict[ast.ClassDef, set[str]] = {}
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef):
            names = set()
            for node in ast.walk(cls):
                targets = []
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                    targets = [node.target]
                for t in targets:
                    for el in t.elts if isinstance(t, ast.Tuple) else [t]:
                        if isinstance(el, ast.Attribute) and _receiver_name(el.value) == "self":
                            names.add(el.attr)
            fields[cls] = names
    return fields


def _call_name(func: ast.expr) -> str:
    return (
        func.id
        if isinstance(func, ast.Name)
        else func.attr
        if isinstance(func, ast.Attribute)
        else ""
    )


def violations(source: str, filename: str) -> list[str]:
    """``file:line: what`` for every family-knowledge leak in ``source``."""
    tree = ast.parse(source, filename)
    out: list[str] = []

    def add(node: ast.AST, what: str) -> None:
        out.append(f"{filename}:{node.lineno}: {what}")

    # every node's innermost enclosing class (for the own-field exemption): an inner class starts
    # after its outer one, so visiting classes by line lets the inner one overwrite
    owner: dict[ast.AST, ast.ClassDef] = {}
    fields = _own_fields(tree)
    for cls in sorted(fields, key=lambda c: c.lineno):
        for node in ast.walk(cls):
            owner[node] = cls

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(OLMO_MODELING):
                    add(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(OLMO_MODELING):
                add(node, f"from {node.module} import ...")
            elif node.module == "transformers.models":
                for alias in node.names:
                    if alias.name.startswith("olmo"):
                        add(node, f"from transformers.models import {alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith(OLMO_MODELING):
                add(node, f"string {node.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
            receiver = _receiver_name(node.value)
            if receiver.endswith("adapter"):
                continue  # the adapter's accessor API
            cls = owner.get(node)
            if receiver == "self" and cls is not None and node.attr in fields[cls]:
                continue  # the class's own field
            add(node, f".{node.attr}")
        elif isinstance(node, ast.Call) and _call_name(node.func) in NAME_TAKING_CALLS:
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    parts = set(arg.value.split("."))
                    bad = sorted(parts & FORBIDDEN_ATTRS)
                    if bad:
                        add(node, f"{_call_name(node.func)}(..., {arg.value!r})")
    return out


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p != ALLOWED_FILE)


def test_no_family_knowledge_outside_family_py():
    found = []
    for path in _modules():
        found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(SRC.parents[1])))
    assert not found, "family knowledge outside family.py:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "code,expected",
    [
        (
            "import transformers.models.olmo2.modeling_olmo2 as m",
            "import transformers.models.olmo2",
        ),
        ("from transformers.models.olmo3 import Olmo3Config", "from transformers.models.olmo3"),
        ("from transformers.models import olmo", "from transformers.models import olmo"),
        ("importlib.import_module('transformers.models.olmo.modeling_olmo')", "string"),
        ("layer.self_attn.q_proj(x)", ".q_proj"),
        ("model.model.layers[0]", ".layers"),
        ("n.variance_epsilon", ".variance_epsilon"),
        ("getattr(layer, 'mlp')", "getattr(..., 'mlp')"),
        ("model.get_submodule('model.layers.0.self_attn')", "get_submodule"),
        ("class A:\n    def f(self, o):\n        return o.layers", ".layers"),
    ],
)
def test_checker_catches(code, expected):
    (hit,) = [v for v in violations(code, "x.py") if expected in v] or [None]
    assert hit is not None, violations(code, "x.py")


@pytest.mark.parametrize(
    "code",
    [
        "adapter.o_proj(3)",
        "self.adapter.lm_head().weight",
        "model.adapter.embed_tokens()",
        "class R:\n    def __init__(self):\n        self.layers = [1]\n    def f(self):\n        return self.layers",
        "'blocks.0.mlp.hook_post'",  # a TransformerLens hook name, not an attribute access
        "def f():\n    '''uses model.layers[i].self_attn internally'''",
        "import transformers.models.llama",
    ],
)
def test_checker_allows(code):
    assert violations(code, "x.py") == []
