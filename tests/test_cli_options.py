"""One spelling per concept across every ``resfu-med`` subcommand; old spellings hidden; help without fake defaults."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout

import pytest

from resfu_med.cli import build_parser, main

# Spellings users (and earlier releases, MONAI, nnU-Net) use for one concept; the first is the only visible one.
CONCEPTS = {
    "output": ("--output", "--out", "--output-dir", "--out-dir", "--output-folder", "--save-dir", "-o"),
    "data root": ("--data-root", "--raw-root", "--root", "--data-dir", "--dataset-dir", "--root-dir"),
    "progress": ("--no-progress", "--no-progress", "--no-progress-bar", "--quiet-progress"),
    "window": ("--roi-size", "--roi", "--window-size", "--patch-window"),
    "per-call batch": ("--sw-batch-size", "--window-batch-size", "--infer-batch-size"),
    "device": ("--device", "--gpu", "--cuda", "--devices"),
    "overwrite": ("--overwrite", "--force", "--replace"),
    "predictions": ("--save-predictions", "--save-nifti", "--save-preds", "--write-predictions"),
}
CANONICAL_SHORT = {"-o": "--output"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _visible(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.help != argparse.SUPPRESS and a.option_strings]


def test_each_concept_has_one_visible_spelling():
    spelled: dict[str, set[str]] = {}
    dest_of: dict[str, set[str]] = {}
    for cmd, p in _subparsers().items():
        for a in _visible(p):
            for opt in a.option_strings:
                dest_of.setdefault(opt, set()).add(a.dest)
                for concept, names in CONCEPTS.items():
                    if opt in names:
                        spelled.setdefault(concept, set()).add(CANONICAL_SHORT.get(opt, opt))
                        assert CANONICAL_SHORT.get(opt, opt) == names[0], f"{cmd}: {opt} spells {concept}; use {names[0]}"
    assert all(len(v) == 1 for v in spelled.values()), spelled
    # a visible spelling means one thing everywhere (e.g. --batch-size is the training batch only)
    assert {o: d for o, d in dest_of.items() if len(d) > 1} == {}


def test_one_dest_is_one_visible_spelling_across_commands():
    spellings: dict[str, set[tuple[str, ...]]] = {}
    for p in _subparsers().values():
        for a in _visible(p):
            long_names = tuple(sorted(o for o in a.option_strings if o.startswith("--")))
            spellings.setdefault(a.dest, set()).add(long_names)
    assert {d: s for d, s in spellings.items() if len(s) > 1} == {}


def test_infer_and_evaluate_have_the_canonical_options():
    subs = _subparsers()
    for cmd in ("infer", "evaluate", "export-bundle"):
        opts = {o for a in _visible(subs[cmd]) for o in a.option_strings}
        assert {"--output", "-o", "--sw-batch-size"} <= opts, cmd
    for cmd in ("infer", "evaluate", "prepare", "train"):
        opts = {o for a in _visible(subs[cmd]) for o in a.option_strings}
        assert "--no-progress" in opts, cmd


@pytest.mark.parametrize("cmd, old, new", [
    (["prepare", "--dataset", "msd"], ["--raw-root", "R", "--out", "O", "--no-progress"],
     ["--data-root", "R", "-o", "O", "--no-progress"]),
    (["infer", "-i", "x", "--checkpoint", "c"], ["-o", "O", "--roi", "8", "8", "--batch-size", "2", "--no-progress"],
     ["--output", "O", "--roi-size", "8", "8", "--sw-batch-size", "2", "--no-progress"]),
    (["evaluate", "--checkpoint", "c"], ["--save-nifti", "--batch-size", "3", "--no-progress"],
     ["--save-predictions", "--sw-batch-size", "3", "--no-progress"]),
    (["export", "--checkpoint", "c"], ["--out", "m.ts"], ["--output", "m.ts"]),
    (["export-bundle", "--checkpoint", "c"], ["--out", "b", "--version", "1.2.3"], ["-o", "b", "--bundle-version", "1.2.3"]),
])
def test_old_spellings_are_hidden_aliases(cmd, old, new, capsys):
    parser = build_parser()
    a, b = vars(parser.parse_args(cmd + old)), vars(parser.parse_args(cmd + new))
    a.pop("_run"), b.pop("_run")
    assert a == b
    err = capsys.readouterr().err
    assert "deprecated" in err
    sub = _subparsers()[cmd[0]]
    help_text = sub.format_help()
    for opt in old:
        if opt.startswith("--") and opt not in {o for a in _visible(sub) for o in a.option_strings}:
            assert opt not in help_text.replace("--output", "").replace("--roi-size", "").replace(
                "--data-root", ""), f"{opt} shown in {cmd[0]} --help"


def test_required_output_still_required_with_alias(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--checkpoint", "c"])
    assert exc.value.code == 2 and "-o/--output" in capsys.readouterr().err


def test_help_shows_defaults_only_where_there_is_one():
    for cmd, p in _subparsers().items():
        text = p.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, cmd
        assert "(default: ==SUPPRESS==)" not in text, cmd
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        main(["infer", "--help"])
    assert "(default: 0.25)" in out.getvalue()
