"""Parsed catalog documents are reused only while the stored text is the same."""

from __future__ import annotations

from tileserver.catalog.models import ParsedDocs, Product


def test_the_same_text_gives_the_same_model_and_a_new_text_a_new_one():
    docs = ParsedDocs(size=2)
    first = Product(id="p", name="one").model_dump_json()
    assert docs.get(Product, "p", first) is docs.get(Product, "p", first)
    changed = docs.get(Product, "p", Product(id="p", name="two").model_dump_json())
    assert changed.name == "two"


def test_the_least_recently_used_model_is_dropped_beyond_the_size():
    docs = ParsedDocs(size=2)
    texts = {key: Product(id=key).model_dump_json() for key in "abc"}
    a = docs.get(Product, "a", texts["a"])
    docs.get(Product, "b", texts["b"])
    assert docs.get(Product, "a", texts["a"]) is a  # "a" is now the most recent
    docs.get(Product, "c", texts["c"])  # drops "b"
    assert docs.get(Product, "a", texts["a"]) is a
    assert len(docs._models) == 2 and (Product, "b") not in docs._models
