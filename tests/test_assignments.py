"""Course assignments (lesson 21): exercise marks, student/instructor notebooks, the grader, and nbgrader's view of them."""
import copy, json, os, shutil, subprocess, sys
from pathlib import Path

import nbformat
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
from detr_edu import assignments as A

sys.path.insert(0, str(Path(__file__).parent))
from assignment_mistakes import MISTAKES

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
LESSONS = [p.stem for p in A.lesson_notebooks(nbs_path=NBS)]


def _read(stem): return nbformat.read(NBS / f"{stem}.ipynb", as_version=4)


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    "Every lesson's assignment, generated once per test process: `(course root, {lesson: (source, release)})`."
    root = tmp_path_factory.mktemp("course")
    return root, A.make_assignment(None, root, nbs_path=NBS)


# --- every lesson, end to end: graded for real, and validated by nbgrader ------------------------------------
# Every lesson with exercises runs three times in a fresh kernel: nbgrader's `validate` of the student and of the
# instructor notebook, and our grader on the instructor notebook (our grader on a student notebook of a real lesson:
# test_grade_prepared_box_ops_submission). These are the slowest tests of the suite: one test per lesson, heaviest
# first, so `pytest -n 2` keeps both workers busy; one generated course per worker.
CELL_TIMEOUT = 300                     # seconds per cell: generous, CI machines are shared and slow
HEAVY_FIRST = ["13_rtdetr", "12_deformable_detr", "14_yolos", "03_backbone", "08_data", "05_detr", "06_matcher"]
E2E_ORDER = sorted(LESSONS, key=lambda s: (HEAVY_FIRST + LESSONS).index(s))
# Lessons whose later, ungraded cells still need the project's nbs/ as working folder, so they err in an assignment
# folder (their graded cells must pass all the same). Remove an entry once the lesson finds its files from anywhere.
NEEDS_NBS_CWD: dict[str, str] = {}     # e.g. {"14_yolos": "loads ../data/models/yolos_shapes.pth"}


def _nbgrader_validate(path):
    """nbgrader's own `validate` of notebook `path` (its executor, a fresh kernel, its verdict), in this process.
    Returns `(result, executed notebook)`: nbgrader's result dict and the notebook as nbgrader ran it."""
    pytest.importorskip("nbgrader")
    from traitlets.config import Config
    from nbgrader.validator import Validator

    class Keeping(Validator):
        def _preprocess(self, nb):
            self.executed = super()._preprocess(nb)
            return self.executed

    cfg = Config(); cfg.Execute.timeout = CELL_TIMEOUT
    # kill the kernel once the notebook has run, as our grader does: a graceful exit of a kernel that imported torch
    # spends ~2 s of CPU tearing the interpreter down, after nbgrader has everything it checks
    cfg.Execute.shutdown_kernel = "immediate"
    v, cwd = Keeping(config=cfg), Path.cwd()
    try: res = v.validate(str(path))
    finally: os.chdir(cwd)             # nbgrader works inside the notebook's folder
    return res, v.executed


def _errors(nb) -> dict:
    "`{cell index: 'ename: evalue'}` of the code cells of an executed notebook that raised."
    return {i: f"{o.ename}: {o.evalue}"[:200] for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.outputs if o.output_type == "error"}


@pytest.mark.slow
@pytest.mark.parametrize("lesson", E2E_ORDER)
def test_lesson_assignment_end_to_end(course, lesson):
    """Student notebook: runs to its end, nothing errs before the first exercise, every graded cell fails, and
    nbgrader's `validate` fails it on exactly those cells. Instructor notebook: nbgrader's `validate` passes it,
    and our grader gives it full marks with no error in any cell."""
    root, written = course
    src, rel = written[lesson]
    nb = nbformat.read(src, as_version=4)                   # the lesson as it was when the course was generated
    first = A.find_exercises(nb)[0].solution
    skipped = {i for i, c in enumerate(nb.cells) if A._directives(c.source) & set(A.SKIP_FLAGS)}  # #| slow, cuda
    # the student notebook, as released
    res, ran = _nbgrader_validate(rel)
    graded = [i for i, c in enumerate(ran.cells) if A.is_graded(c)]
    assert set(res) == {"failed"}, res
    assert sorted(f["source"] for f in res["failed"]) == sorted(ran.cells[i].source.strip() for i in graded)
    assert all(c.execution_count for c in ran.cells if c.cell_type == "code" and c.source.strip()), \
        "the student notebook did not run to its end"
    errs = _errors(ran)
    assert set(graded) <= set(errs), {i: errs.get(i) for i in graded}
    assert not {i: e for i, e in errs.items() if i < first}, errs          # the lesson's setup runs as it is
    assert not {i: e for i, e in errs.items() if "Timeout" in e or "KeyboardInterrupt" in e}, errs
    # the instructor notebook: nbgrader passes it (nothing failed, nothing changed), our grader too
    res, ran = _nbgrader_validate(src)
    assert res == {}, res
    stands_alone = lesson not in NEEDS_NBS_CWD
    assert not stands_alone or not {i: e for i, e in _errors(ran).items() if i not in skipped}, _errors(ran)
    r = A.grade_notebook(src, src, timeout=CELL_TIMEOUT)
    assert r.max_score == sum(e.points for e in A.find_exercises(nb)) > 0
    assert (r.score, r.notes) == (r.max_score, []), str(r)
    assert all(c.status == "passed" for c in r.cells), str(r)
    assert not stands_alone or not r.errors, r.errors


# --- marks, exercises and their known mistakes ----------------------------------------------------------
def test_at_least_ten_exercises_each_with_known_mistakes():
    ids = [e.grade_id for s in LESSONS for e in A.find_exercises(_read(s))]
    assert len(ids) >= 10 and len(set(ids)) == len(ids), ids
    assert set(MISTAKES) <= set(ids), set(MISTAKES) - set(ids)
    for gid in ids:
        assert len(MISTAKES.get(gid, [])) >= 2, f"exercise {gid} needs at least two known mistakes"


def test_marks_keep_library_clean():
    "Solution/hidden markers never reach an exported cell or the library; nbdev-clean keeps the metadata."
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    keys = get_config(ROOT).get("allowed_cell_metadata_keys")
    assert {"nbgrader", "detr_edu"} <= set(keys)
    for s in LESSONS:
        nb = _read(s)
        for c in nb.cells:
            if "#| export" in c.source: assert "### " not in c.source.replace("### BEGIN HIDDEN", "")
        cleaned = copy.deepcopy(nb)
        clean_nb(cleaned, allowed_cell_metadata_keys=keys)
        assert [c.metadata.get("nbgrader") for c in cleaned.cells] == [c.metadata.get("nbgrader") for c in nb.cells]
    for py in (ROOT / "detr_edu").glob("*.py"):
        if py.name == "assignments.py": continue
        text = py.read_text()
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text, py


@pytest.mark.parametrize("lesson", LESSONS)
def test_graded_cells_catch_stub_and_known_mistakes(lesson):
    """The lesson's answer passes its graded cells (with and without the hidden tests); the stub fails every one;
    each known mistake fails at least one."""
    nb = _read(lesson)
    ns, done = {"__name__": "__main__"}, 0
    for e in A.find_exercises(nb):
        for i in range(done, e.solution):              # the lesson up to this exercise, continuing from the last one
            c = nb.cells[i]
            if c.cell_type == "code" and not (A._directives(c.source) & set(A.SKIP_FLAGS)): A._exec(c.source, ns, f"<cell {i}>")
        done, pre = e.solution, dict(ns)
        for hidden in (True, False):
            res = A.try_exercise(nb, e.grade_id, hidden=hidden, _prefix=pre)
            assert not any(res.values()), (e.grade_id, hidden, res)
        res = A.try_exercise(nb, e.grade_id, stub=True, _prefix=pre)
        assert res and all(res.values()), (e.grade_id, res)
        for what, code in MISTAKES[e.grade_id]:
            res = A.try_exercise(nb, e.grade_id, code, _prefix=pre)
            assert any(res.values()), f"{e.grade_id}: the mistake '{what}' passes every graded cell"


def test_make_assignment_layout(course, tmp_path):
    root, written = course
    assert sorted(written) == LESSONS
    for name, (src, rel) in written.items():
        assert src == root / "source" / name / f"{name}.ipynb" and rel == root / "release" / name / f"{name}.ipynb"
        lesson, inst, stud = _read(name), nbformat.read(src, as_version=4), nbformat.read(rel, as_version=4)
        assert [c.get("id") for c in stud.cells] == [c.get("id") for c in lesson.cells] == [c.get("id") for c in inst.cells]
        for c0, ci, cs in zip(lesson.cells, inst.cells, stud.cells):
            if cs.cell_type != "code": assert cs.source == c0.source; continue
            assert not cs.outputs and cs.execution_count is None
            assert A.BEGIN_HIDDEN not in cs.source and A.BEGIN_SOLUTION not in cs.source
            if A.is_solution(c0):
                assert A.BEGIN_SOLUTION in ci.source and A.clear_solutions(ci.source) == cs.source
                assert cs.source.count("raise NotImplementedError()") >= 1
                assert ci.source.replace(A.BEGIN_SOLUTION, "").replace(A.END_SOLUTION, "").split() == c0.source.split()
            elif A.is_graded(c0):
                assert ci.source == c0.source and cs.source == A.strip_hidden_tests(c0.source)
                assert cs.metadata["detr_edu"]["checksum"] == A.checksum(cs.source)
                assert ci.metadata["nbgrader"]["locked"] and ci.metadata["nbgrader"]["points"] > 0
            else:
                assert cs.source == c0.source == ci.source
        assert stud.metadata["detr_edu"] == {"lesson": name, "version": "student",
                                             "exercises": [e.grade_id for e in A.find_exercises(lesson)]}
    with pytest.raises(ValueError, match="no exercises"):
        A.make_assignment(["16"], tmp_path, nbs_path=NBS)


# --- the grader on a toy lesson (no torch in the kernel: a few seconds per run) -------------------------
def toy_lesson():
    S = lambda gid: {"nbgrader": {"solution": True, "grade": False, "grade_id": gid, "locked": False, "schema_version": 3}}
    G = lambda gid, p: {"nbgrader": {"grade": True, "solution": False, "grade_id": gid, "points": p, "locked": True, "schema_version": 3}}
    c = nbformat.v4
    cells = [c.new_markdown_cell("# Toy"), c.new_code_cell("import math"),
             c.new_code_cell('def clip01(x):\n    "`x` clipped to [0, 1]."\n    return min(max(x, 0.0), 1.0)', metadata=S("clip01")),
             c.new_code_cell("assert clip01(-1) == 0 and clip01(2) == 1 and clip01(0.5) == 0.5", metadata=G("clip01_tests", 1)),
             c.new_code_cell('def mean(xs):\n    "Average."\n    if not xs: raise ValueError("empty")\n    return sum(xs) / len(xs)', metadata=S("mean")),
             c.new_code_cell("assert mean([1, 2, 3]) == 2\n### BEGIN HIDDEN TESTS\ntry: mean([]); ok = False\nexcept ValueError: ok = True\nassert ok, 'mean([]) must raise'\n### END HIDDEN TESTS", metadata=G("mean_tests", 2)),
             c.new_code_cell("import slow_thing  # never run", metadata={}),
             c.new_code_cell("print(clip01(3), mean([1, 2]))")]
    cells[6].source = "#| slow\nimport this_module_does_not_exist"
    for i, cell in enumerate(cells): cell["id"] = f"toy{i}"
    return c.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}})


@pytest.fixture
def toy_course(tmp_path):
    toy = toy_lesson()
    for kind, make in (("source", A.instructor_notebook), ("release", A.student_notebook)):
        (tmp_path / kind / "toy").mkdir(parents=True)
        nbformat.write(make(toy, "toy"), tmp_path / kind / "toy" / "toy.ipynb")
    (tmp_path / "submitted/bo/toy").mkdir(parents=True)
    return tmp_path


def _submit(course, nb):
    p = course / "submitted/bo/toy/toy.ipynb"; nbformat.write(nb, p); return p


def test_grade_toy_fair_against_tampering(toy_course):
    stud = nbformat.read(toy_course / "release/toy/toy.ipynb", as_version=4)
    # 1. instructor version: full marks; untouched stub: nothing
    r = A.grade_notebook(toy_course / "source/toy/toy.ipynb", timeout=20)
    assert (r.score, r.max_score) == (3, 3) and not r.errors, r
    r = A.grade_notebook(_submit(toy_course, stud), timeout=20)
    assert r.score == 0 and [c.status for c in r.cells] == ["failed", "failed"]
    assert all(c.error.startswith("NotImplementedError") for c in r.cells)
    # 2. early raise + tampered test + right/wrong answers + graded cell stripped of its metadata (matched by id)
    sub = copy.deepcopy(stud)
    sub.cells[2].source = "def clip01(x): return max(0.0, min(1.0, x))"
    sub.cells[4].source = "def mean(xs): return sum(xs) / max(len(xs), 1)"
    sub.cells[5].source = "pass"; sub.cells[5].metadata = {}
    sub.cells[3].source = "assert True  # not my problem"
    sub.cells.insert(1, nbformat.v4.new_code_cell("raise RuntimeError('early')"))
    r = A.grade_notebook(_submit(toy_course, sub), timeout=20)
    assert (r.score, r.max_score) == (1, 3), r
    assert [c.status for c in r.cells] == ["passed", "failed"] and "must raise" in r.cells[1].error
    assert all(any("edited" in n for n in c.notes) for c in r.cells)
    assert any("RuntimeError: early" in e for e in r.errors)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["score"] == 1 and d["max_score"] == 3 and d["cells"][1]["status"] == "failed"


@pytest.mark.filterwarnings("ignore::nbformat.warnings.DuplicateCellId")   # the duplicate is the point
def test_grade_toy_loop_deleted_reordered_duplicated(toy_course):
    stud = nbformat.read(toy_course / "release/toy/toy.ipynb", as_version=4)
    sub = copy.deepcopy(stud)
    sub.cells[2].source = "def clip01(x):\n    while x < 0: pass\n    return min(x, 1.0)"
    sub.cells[4].source = "def mean(xs):\n    if not xs: raise ValueError('empty')\n    return sum(xs) / len(xs)"
    moved = sub.cells.pop(5); del sub.cells[3]
    sub.cells.insert(0, moved); sub.cells.append(copy.deepcopy(moved))         # moved to the top, and duplicated
    sub.cells.append(nbformat.v4.new_code_cell("open('escaped.txt', 'w').write('x')"))
    r = A.grade_notebook(_submit(toy_course, sub), timeout=3)
    assert (r.score, r.max_score) == (2, 3), r
    assert [c.status for c in r.cells] == ["timeout", "passed"]
    assert any("missing" in n for n in r.cells[0].notes)
    assert any("moved" in n for n in r.cells[1].notes) and any("duplicate" in n for n in r.cells[1].notes)
    assert not list(toy_course.rglob("escaped.txt")) and not (Path.cwd() / "escaped.txt").exists()
    # an answer imported from a library earns nothing (statistics.mean passes both tests)
    sub = copy.deepcopy(stud); sub.cells[4].source = "from statistics import mean"
    r = A.grade_notebook(_submit(toy_course, sub), timeout=20)
    assert [(c.status, c.points) for c in r.cells] == [("failed", 0), ("failed", 0)]
    assert "mean comes from statistics" in r.cells[1].notes[-1]
    # unreadable submission: zero, nothing run
    bad = toy_course / "submitted/bo/toy/toy.ipynb"; bad.write_text("{not json")
    r = A.grade_notebook(bad, toy_course / "source/toy/toy.ipynb")
    assert r.score == 0 and [c.status for c in r.cells] == ["not run"] * 2 and "could not read" in r.notes[0]


def test_cli_assign_and_grade(toy_course, tmp_path, capsys):
    out = tmp_path / "course"
    assert A.main(["assign", "--lessons", "01,02", "--out", str(out), "--nbs", str(NBS)]) == 0
    assert sorted(p.name for p in (out / "release").iterdir()) == ["01_box_ops", "02_position_encoding"]
    capsys.readouterr()
    p = _submit(toy_course, nbformat.read(toy_course / "source/toy/toy.ipynb", as_version=4))
    assert A.main(["grade", str(p), "--json", "--timeout", "20"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["score"], rep["max_score"]) == (3, 3)
    A.main(["grade", str(p)])
    table = capsys.readouterr().out
    assert "toy: 3/3 points" in table and "clip01_tests" in table
    with pytest.raises(SystemExit): A.main(["grade"])
    with pytest.raises(SystemExit) as ex: A.main(["assign", "--lessons", "99", "--out", str(out), "--nbs", str(NBS)])
    assert ex.value.code == 2 and "matches 0 notebooks" in capsys.readouterr().err
    with pytest.raises(SystemExit): A.main(["grade", str(tmp_path / "nowhere" / "x.ipynb")])


# --- a prepared submission gets exactly its score; nbgrader generates the same student notebooks ---------
@pytest.mark.slow
def test_grade_prepared_box_ops_submission(course):
    "Right conversions and area, box_iou with the union mistake, GIoU left as the stub: exactly 2 of 6 points."
    root, written = course
    lesson = _read("01_box_ops")
    sub = nbformat.read(written["01_box_ops"][1], as_version=4)
    ex = {e.grade_id: e for e in A.find_exercises(lesson)}
    for gid in ("box_convert", "box_area"):
        sub.cells[ex[gid].solution].source = lesson.cells[ex[gid].solution].source
    wrong = lesson.cells[ex["box_iou"].solution].source
    assert "union = area1[:, None] + area2[None, :] - inter" in wrong
    sub.cells[ex["box_iou"].solution].source = wrong.replace("- inter  ", "  ", 1).replace(" - inter", "", 1)
    (root / "submitted/cy/01_box_ops").mkdir(parents=True)
    p = root / "submitted/cy/01_box_ops/01_box_ops.ipynb"; nbformat.write(sub, p)
    r = A.grade_notebook(p, timeout=CELL_TIMEOUT)                        # finds source/01_box_ops/ above the submission
    got = {c.grade_id: (c.status, c.points) for c in r.cells}
    assert got == {"box_convert_tests": ("passed", 1), "box_area_tests": ("passed", 1),
                   "box_iou_tests": ("failed", 0), "generalized_box_iou_tests": ("failed", 0)}, r
    assert (r.score, r.max_score) == (2, 6)
    assert "NotImplementedError" in {c.grade_id: c.error for c in r.cells}["generalized_box_iou_tests"]
    # the student notebook runs to the end: every error outside graded cells comes from an unfinished exercise
    assert not r.notes and all(("NotImplementedError" in e or "NameError" in e) for e in r.errors), (r.notes, r.errors)


@pytest.mark.slow
def test_nbgrader_generate_assignment_matches(course, tmp_path):
    "nbgrader's `generate_assignment` on our source notebooks gives the code of our release notebooks, cell by cell."
    pytest.importorskip("nbgrader")
    root, ours = course
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # nbgrader runs `alembic`
    nbg = tmp_path / "course"; nbg.mkdir()
    shutil.copytree(root / "source", nbg / "source")
    cp = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", "*", "--force", "--no-db"],
                        cwd=nbg, env=env, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert sorted(p.name for p in (nbg / "release").iterdir()) == LESSONS
    for name, (_, rel) in ours.items():
        theirs = nbformat.read(nbg / "release" / name / f"{name}.ipynb", as_version=4)
        mine = nbformat.read(rel, as_version=4)
        assert len(theirs.cells) == len(mine.cells), name
        for a, b in zip(theirs.cells, mine.cells):
            assert a.source == b.source, (name, a.get("id"), a.source[:200], b.source[:200])
