"""EXERCISES.md keeps working: every `python <script> ...` line of the sheet parses with that script's
own argument parser, every grader it names exists, and every function it names (as `file.py:name`)
is defined in that file. A renamed flag or function then fails here instead of in a classroom."""

import ast
import os
import re
import shlex


from helpers import assert_parses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHEET = os.path.join(ROOT, "EXERCISES.md")
SCRIPTS = ("train_ae.py", "train_dit.py", "sample.py", "evaluate.py", "bench.py")


def sheet_text():
    with open(SHEET, encoding="utf-8") as f:
        return f.read()


def command_lines(text):
    """The logical lines of the sheet's code blocks that run python (continuations joined)."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            words = shlex.split(line) if line else []
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # OMP_NUM_THREADS=1 python ...
                words = words[1:]
            if words and words[0] == "python":
                lines.append(words[1:])
    return lines


def test_every_script_command_parses_with_its_own_parser():
    commands = [c for c in command_lines(sheet_text()) if c and c[0] != "-m"]
    assert len(commands) >= 10, "the sheet has fewer runnable commands than exercises"
    for words in commands:
        script, args = words[0], words[1:]
        assert script in SCRIPTS, f"EXERCISES.md runs an unknown script: python {' '.join(words)}"
        assert_parses(script, args, "EXERCISES.md")


def test_every_grader_exists():
    graders = [c[2:] for c in command_lines(sheet_text()) if c[:2] == ["-m", "pytest"]]
    assert len(graders) >= 4, "fewer than four re-implement graders"
    for args in graders:
        path = next(a for a in args if a.startswith("tests/"))
        file, _, node = path.partition("::")
        with open(os.path.join(ROOT, file), encoding="utf-8") as f:
            tests = {n.name for n in ast.parse(f.read()).body if isinstance(n, ast.FunctionDef)
                     and n.name.startswith("test_")}
        if node:
            assert node in tests, f"EXERCISES.md names {path}, which does not exist"
        if "-k" in args:
            expr = args[args.index("-k") + 1]
            words = [w for w in re.findall(r"\w+", expr) if w not in ("and", "or", "not")]
            assert any(all(w in t for w in words) for t in tests), \
                f"EXERCISES.md: `-k {expr}` selects no test of {file}"


def defined_names(path):
    """Top-level functions and classes of a file, and Class.method for their methods."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
    return names


def test_every_named_function_exists_in_its_file():
    refs = set(re.findall(r"`(\w+\.py):([\w.]+)`", sheet_text()))
    assert len(refs) >= 5, "the sheet names fewer functions than it has re-implement exercises"
    for file, name in sorted(refs):
        assert os.path.exists(os.path.join(ROOT, file)), f"EXERCISES.md names {file}, which is gone"
        assert name in defined_names(file), f"EXERCISES.md names `{file}:{name}`, not defined there"


def test_the_sheet_has_its_exercises_in_order_with_answers():
    text = sheet_text()
    headings = re.findall(r"^### (\d+)\. .*\((predict, run, explain|re-implement)\)", text, flags=re.M)
    numbers = [int(n) for n, _ in headings]
    assert numbers == list(range(1, len(numbers) + 1)), f"exercise numbers out of order: {numbers}"
    kinds = [k for _, k in headings]
    assert kinds.count("predict, run, explain") >= 6 and kinds.count("re-implement") >= 4, kinds
    # every predict-run-explain exercise hides a measured answer
    sections = re.split(r"^### ", text, flags=re.M)[1:]
    for section in sections:
        if "(predict, run, explain)" in section.splitlines()[0]:
            assert "<details>" in section and "</details>" in section, section.splitlines()[0]


def test_the_readme_links_the_sheet():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert "(EXERCISES.md)" in f.read()
