import shutil
import socket

import numpy as np
import pandas as pd
import pytest
from gradio_client import Client

from fincompress.common.paths import LABELS, FinCompressError
from fincompress.demo import app as demo

SENTENCE = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007."
PROBABILITY_COLUMNS = [f"p_{name}" for name in LABELS]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_variant_root(work_root):
    """The tiny teacher plus a copy of it under another name (same weights, so it must agree)."""
    checkpoints = work_root / "checkpoints"
    shutil.copytree(checkpoints / "teacher", checkpoints / "teacher_copy")
    return work_root


@pytest.fixture(scope="module")
def teacher_only(trained_root):
    """The tiny teacher loaded in PyTorch (loading writes nothing, so the read-only root is fine)."""
    return demo.load_side_by_side(trained_root, runtime="torch")


def test_launched_demo_answers_through_gradio_client(two_variant_root):
    side_by_side = demo.load_side_by_side(two_variant_root)
    app = demo.build_app(side_by_side, two_variant_root)
    url = demo.launch(app, "127.0.0.1", free_port(), block=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        notice, table = client.predict(SENTENCE, api_name="/predict")
        rows = pd.DataFrame(table["data"], columns=table["headers"])
        assert list(rows.columns) == demo.TABLE_COLUMNS
        assert sorted(rows["variant"]) == ["teacher", "teacher_copy"]
        assert ((rows[PROBABILITY_COLUMNS].sum(axis=1) - 1).abs() < 1e-3).all()
        assert set(rows["label"]) <= set(LABELS)
        assert (rows["latency_ms"] > 0).all()
        by_name = rows.set_index("variant")
        assert by_name.loc["teacher", "agrees_with_teacher"] == "reference"
        assert by_name.loc["teacher_copy", "agrees_with_teacher"] == "yes"
        assert "1 of 1 other variant(s) agree" in notice
        # the probabilities the browser sees are the loader's, in the project's label order
        direct = side_by_side.predictors[0].predict_proba([SENTENCE])[0]
        assert np.allclose(by_name.loc["teacher", PROBABILITY_COLUMNS].astype(float), direct, atol=1e-3)

        for empty in ("", "   \n\t"):
            notice, table = client.predict(empty, api_name="/predict")
            assert notice == demo.EMPTY_INPUT_MESSAGE
            assert table["data"] == []
    finally:
        app.close()


def test_long_input_is_truncated_with_a_notice(teacher_only):
    notice, rows = teacher_only.predict_table("Net sales increased while costs fell. " * 100)
    assert "only the first 128 tokens" in notice and "up to" in notice
    assert len(rows) == 1 and abs(sum(rows[0][4:7]) - 1) < 1e-3
    notice, _ = teacher_only.predict_table(SENTENCE)
    assert "tokens" not in notice


def test_huge_input_is_cut_before_tokenizing():
    text, notice = demo.clip_characters("x" * 50, max_chars=20)
    assert text == "x" * 20 and "50 characters" in notice
    assert demo.clip_characters("short", max_chars=20) == ("short", None)


def test_non_english_input_is_predicted_with_a_notice(teacher_only):
    notice, rows = teacher_only.predict_table("公司第三季度净利润同比增长百分之十二。")
    assert "does not look like English" in notice and len(rows) == 1
    assert "English" not in teacher_only.predict_table(SENTENCE)[0]
    assert "no letters" in demo.language_notice("12.5 % / 3.1 %")


def test_without_variants_every_entry_point_says_so(tmp_path, capsys):
    side_by_side = demo.load_side_by_side(tmp_path)
    notice, rows = side_by_side.predict_table(SENTENCE)
    assert "No model variants found" in notice and "train_teacher" in notice and rows == []
    assert "No model variants found" in side_by_side.status()
    with pytest.raises(FinCompressError, match="No model variants found"):
        demo.main(["--root", str(tmp_path), "--check"])


def test_check_mode_predicts_an_example_in_the_console(trained_root, capsys):
    _, rows = demo.main(["--root", str(trained_root), "--check", "--runtime", "torch"])
    assert [row[0] for row in rows] == ["teacher"]
    assert "agrees_with_teacher" in capsys.readouterr().out


def test_check_predicts_the_users_sentence_and_shows_it(trained_root, capsys):
    _, rows = demo.main(["--root", str(trained_root), "--check", "--text", "Quarterly profit fell sharply",
                         "--variants", "teacher,teacher"])
    assert [row[0] for row in rows] == ["teacher"]  # a name given twice is one row
    assert "sentence: Quarterly profit fell sharply" in capsys.readouterr().out
    with pytest.raises(FinCompressError, match="--text goes with --check"):
        demo.main(["--root", str(trained_root), "--text", "x"])


def test_bad_arguments_are_refused(trained_root):
    with pytest.raises(FinCompressError, match="unknown variant"):
        demo.load_side_by_side(trained_root, "teacher,nope")
    for flag, value in (("--port", "0"), ("--port", "70000"), ("--threads", "0")):
        with pytest.raises(SystemExit) as caught:
            demo.main(["--root", str(trained_root), flag, value, "--check"])
        assert caught.value.code == 2


def test_examples_come_from_the_test_split_when_present(trained_root, tmp_path):
    examples = demo.example_sentences(trained_root)
    test_texts = set(pd.read_csv(trained_root / "data" / "test.csv")["text"])
    assert len([e for e in examples if e in test_texts]) == len(LABELS)
    assert demo.example_sentences(tmp_path) == demo.BUILT_IN_EXAMPLES


def test_benchmark_tab_shows_results_or_how_to_make_them(tmp_path):
    bench_note, frame, plot_note, plot = demo.results_view(tmp_path)
    assert "fincompress.evaluation.benchmark" in bench_note and frame.empty
    assert "fincompress.evaluation.plots" in plot_note and plot is None
    (tmp_path / "results" / "plots").mkdir(parents=True)
    pd.DataFrame({"model_name": ["teacher"], "runtime": ["torch"], "macro_f1": [0.81234567],
                  "extra": [1]}).to_csv(tmp_path / "results" / "benchmark_results.csv", index=False)
    (tmp_path / "results" / "plots" / "pareto.png").write_bytes(b"\x89PNG")
    bench_note, frame, _, plot = demo.results_view(tmp_path)
    assert list(frame.columns) == ["model_name", "runtime", "macro_f1"] and frame["macro_f1"][0] == 0.8123
    assert plot.endswith("pareto.png")


def test_agreement_is_judged_against_the_teacher_label():
    def prediction(name, probabilities):
        return demo.Prediction(name, "t", "torch", probabilities, 1.0)

    teacher = prediction("teacher", [0.1, 0.7, 0.2])
    agrees, disagrees = prediction("a", [0.2, 0.5, 0.3]), prediction("b", [0.1, 0.2, 0.7])
    rows = demo.table_rows([teacher, agrees, disagrees])
    assert [(row[0], row[3], row[-1]) for row in rows] == [
        ("teacher", "neutral", "reference"), ("a", "neutral", "yes"), ("b", "positive", "no")]
    assert "1 of 2 other variant(s) agree" in demo.summary_line([teacher, agrees, disagrees])
    assert "only variant" in demo.summary_line([teacher])
    assert {row[-1] for row in demo.table_rows([agrees, disagrees])} == {"no teacher"}
    assert "No `teacher` variant" in demo.summary_line([agrees, disagrees])


def test_a_broken_variant_is_reported_and_the_others_still_load(work_root):
    broken = work_root / "checkpoints" / "broken"
    shutil.copytree(work_root / "checkpoints" / "teacher", broken)
    (broken / "model.safetensors").unlink()
    side_by_side = demo.load_side_by_side(work_root)
    assert [p.name for p in side_by_side.predictors] == ["teacher"]
    assert "Not loaded: `broken`" in side_by_side.status() and "model.safetensors" in side_by_side.status()
    assert len(side_by_side.predict_table(SENTENCE)[1]) == 1


def test_check_fails_naming_each_broken_variant_when_none_loads(work_root, capsys):
    checkpoints = work_root / "checkpoints"
    shutil.copytree(checkpoints / "teacher", checkpoints / "truncated")
    weights = checkpoints / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    (checkpoints / "teacher" / "checkpoint_info.json").write_text("{not json")
    (checkpoints / "leftover").mkdir()
    with pytest.raises(FinCompressError) as caught:
        demo.main(["--root", str(work_root), "--check"])
    message = str(caught.value)
    assert "none of the 3 variant(s)" in message and "\n" not in message
    assert "teacher:" in message and "corrupt" in message
    assert "truncated:" in message and "damaged" in message
    assert "leftover:" in message and "checkpoint_info.json" in message


def test_check_passes_with_a_warning_when_some_variants_load(two_variant_root, capsys):
    (two_variant_root / "checkpoints" / "teacher_copy" / "model.safetensors").unlink()
    _, rows = demo.main(["--root", str(two_variant_root), "--check"])
    assert [row[0] for row in rows] == ["teacher"]
    assert "not loaded: `teacher_copy`" in capsys.readouterr().err


@pytest.mark.parametrize(("given", "fragment"), [
    (None, demo.EMPTY_INPUT_MESSAGE), ("", demo.EMPTY_INPUT_MESSAGE), (" \n\t ", demo.EMPTY_INPUT_MESSAGE),
    ("\u200b\u2060", demo.EMPTY_INPUT_MESSAGE),
    (42, "must be text"), (["Profit rose."], "must be text"), ({"text": "x"}, "must be text"),
    (b"Profit rose.", "must be text"),
])
def test_api_refuses_non_text_and_empty_input_with_a_message(teacher_only, given, fragment):
    notice, rows = teacher_only.predict_table(given)
    assert fragment in notice and rows == []


def test_api_answers_huge_and_odd_inputs(teacher_only):
    notice, rows = teacher_only.predict_table("Profit rose. " * 200_000)  # 2.6 M characters
    assert "only the first 20,000 were read" in notice and len(rows) == 1
    for odd in ("\x00\x01 profit \ufffd", "\U0001F4C8 shares up", "<script>alert(1)</script>", "   x   "):
        notice, rows = teacher_only.predict_table(odd)
        assert len(rows) == 1 and abs(sum(rows[0][4:7]) - 1) < 1e-3


def test_a_variant_failing_on_an_input_is_reported_not_raised(two_variant_root):
    side_by_side = demo.load_side_by_side(two_variant_root)
    broken = next(p for p in side_by_side.predictors if p.name == "teacher_copy")

    def fail(encoded):
        raise RuntimeError("onnxruntime: bad input")

    broken.logits = fail
    notice, rows = side_by_side.predict_table(SENTENCE)
    assert [row[0] for row in rows] == ["teacher"]
    assert "`teacher_copy` could not predict this input (RuntimeError: onnxruntime: bad input)" in notice


def test_predict_one_shows_the_calibrated_probabilities_of_the_loader():
    """The demo's probabilities are the loader's: a variant's calibration temperature is applied."""
    from fincompress.common.loader import Predictor

    class Fixed(Predictor):
        def __init__(self, temperature):
            self.name, self.info, self.runtime, self.temperature = "v", {"technique": "t"}, "torch", temperature

        def encode(self, texts):
            return {}

        def logits(self, encoded):
            return np.array([[2.0, 0.0, -1.0]], dtype=np.float32)

    plain = demo.predict_one(Fixed(1.0), SENTENCE).probabilities
    calibrated = demo.predict_one(Fixed(3.0), SENTENCE).probabilities
    assert sum(plain) == pytest.approx(1.0) and sum(calibrated) == pytest.approx(1.0)
    assert calibrated[0] < plain[0]  # a temperature > 1 softens the top class
    assert calibrated == pytest.approx(Fixed(3.0).probabilities(np.array([[2.0, 0.0, -1.0]]))[0].tolist())
