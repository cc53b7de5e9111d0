"""The call-count benchmark names functions alike in every build (benches/call_counts.py)."""

from __future__ import annotations

from pathlib import Path

from benches.call_counts import differences, function_name


def test_a_function_is_named_by_module_path_whatever_checkout_or_line() -> None:
    here, there = Path("/work/main"), Path("/tmp/before")
    ours = function_name(("/work/main/gateway/http/site.py", 120, "render"), here)
    theirs = function_name(("/tmp/before/gateway/http/site.py", 98, "render"), there)
    assert ours == theirs == "gateway/http/site.py:render"


def test_a_library_is_named_from_site_packages_even_inside_the_checkout() -> None:
    venv = "/work/main/.venv/lib/python3.11/site-packages/twisted/web/http.py"
    assert function_name((venv, 10, "write"), Path("/work/main")) == "twisted/web/http.py:write"
    assert function_name((venv, 10, "write"), Path("/tmp/before")) == "twisted/web/http.py:write"


def test_a_builtin_loses_its_object_address() -> None:
    name = "<built-in method __new__ of type object at 0x7f151d85ea00>"
    assert function_name(("~", 0, name), Path("/x")) == "<built-in method __new__ of type object>"


def test_differences_rank_by_size_and_leave_out_equal_counts() -> None:
    now = {"a": 10.0, "b": 5.0, "c": 1.0, "same": 3.0}
    before = {"a": 9.0, "b": 8.0, "same": 3.0, "gone": 2.0}
    assert differences(now, before, top=10) == [
        ("b", 5.0, 8.0), ("gone", 0.0, 2.0), ("a", 10.0, 9.0), ("c", 1.0, 0.0)]
