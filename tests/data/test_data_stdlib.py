from __future__ import annotations

from olmokit.data.stdlib import (
    build_corpus,
    is_held_out,
    iter_docstrings,
    module_name,
    stdlib_root,
    stdlib_source_files,
)


def test_source_files_exclude_tests_and_site_packages():
    files = stdlib_source_files()
    assert len(files) > 300
    rel = [f.relative_to(stdlib_root()).parts for f in files]
    assert not [
        r
        for r in rel
        if "test" in r or "tests" in r or "site-packages" in r or r[0].startswith("test")
    ]
    assert any(r[-1] == "decoder.py" and r[0] == "json" for r in rel)


def test_split_is_a_fixed_function_of_the_source():
    # sha1 of the key, first 4 bytes big-endian, mod 10: fixed on every platform and Python
    held = [
        k for k in [f"file:{i}.py" for i in range(13)] + ["file:json/decoder.py"] if is_held_out(k)
    ]
    assert held == ["file:0.py", "file:4.py"]
    flags = [is_held_out(f"file:{i}.py") for i in range(2000)]
    assert 0.07 < sum(flags) / len(flags) < 0.13


def test_docstrings_and_module_names():
    src = '"""Mod doc."""\nclass A:\n    """A doc."""\n    def f(self):\n        """f doc."""\n'
    assert list(iter_docstrings(src)) == [("", "Mod doc."), ("A", "A doc."), ("A.f", "f doc.")]
    root = stdlib_root()
    assert module_name(root / "json" / "__init__.py") == "json"
    assert module_name(root / "json" / "decoder.py") == "json.decoder"


def test_corpus_is_deterministic_and_docstrings_follow_their_file():
    a, b = build_corpus(), build_corpus()
    assert [d.source for d in a.documents] == [d.source for d in b.documents]
    stats = a.stats()
    assert stats["train_prose_chars"] > 1_000_000 and stats["heldout_code_docs"] > 20
    by_file = {}
    for d in a.documents:
        if d.source.startswith(("doc:", "code:")):
            path = d.source.split(":")[1]
            by_file.setdefault(path, set()).add(d.held_out)
    assert all(len(flags) == 1 for flags in by_file.values())
