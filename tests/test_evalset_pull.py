"""`evomerge evalset pull` offline: local files in each dataset's own schema go through `datasets` into eval sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.cli import main
from evomerge.errors import UserError
from evomerge.evalsets import guard_test_splits, load_evalset
from evomerge.evalsources.ifeval import constraints
from evomerge.verifiers import check, parse_constraint


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")


def _pull(*args: str) -> None:
    assert main(["evalset", "pull", *args]) == 0


def test_belebele_splits_by_passage(tmp_path, capsys):
    rows = []
    for p in range(30):  # 30 passages with 1-3 questions each: 60 questions
        for q in range(1 + p % 3):
            rows.append({"link": f"https://example.org/{p}", "question_number": q + 1,
                         "flores_passage": f"Pasartea {p}. Testu luzea da.", "question": f"Galdera {p}-{q}?",
                         "mc_answer1": "bat", "mc_answer2": "bi", "mc_answer3": "hiru", "mc_answer4": "lau",
                         "correct_answer_num": str(1 + (p + q) % 4), "dialect": "eus_Latn", "ds": "2023-05-03"})
    _jsonl(tmp_path / "src" / "test.jsonl", rows)
    out = tmp_path / "sets"
    _pull("belebele", "--lang", "eu", "--dev", "20", "--holdout", "30", "--seed", "0", "--from",
          str(tmp_path / "src"), "--out", str(out))
    assert "wrote" in capsys.readouterr().out
    es = load_evalset(out / "belebele_eu")
    dev, hold = es.select("dev"), es.select("holdout")
    assert len(dev) == 20 and 27 <= len(hold) <= 30  # whole passages only: a split may come out a little short
    assert not {it.fields["passage"] for it in dev} & {it.fields["passage"] for it in hold}
    assert es.card.form == "letter" and es.card.origin["dataset"] == "facebook/belebele"
    item = dev[0]
    assert item.prompt(es.card).startswith("P: Pasartea") and item.prompt(es.card).endswith("D: lau\nAnswer:")
    # Belebele is test data: the search refuses it as a dev set unless told
    with pytest.raises(UserError, match="facebook/belebele"):
        guard_test_splits([es])
    # same seed, same split; another seed, another split; an existing set is not overwritten
    _pull("belebele", "--lang", "eu", "--dev", "20", "--holdout", "30", "--from", str(tmp_path / "src"),
          "--out", str(out), "--name", "again")
    assert (out / "again" / "items.jsonl").read_text().replace("again", "x") == \
        (out / "belebele_eu" / "items.jsonl").read_text().replace("belebele_eu", "x")
    assert main(["evalset", "pull", "belebele", "--lang", "eu", "--from", str(tmp_path / "src"), "--out",
                 str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_belebele_galician_comes_from_its_own_dataset(tmp_path):
    rows = [{"flores_passage": f"Pasaxe {i}", "question": "Que?", "mc_answer1": "a", "mc_answer2": "b",
             "mc_answer3": "c", "mc_answer4": "d", "correct_answer_num": 2} for i in range(10)]
    _jsonl(tmp_path / "src" / "train.jsonl", rows)  # proxectonos/belebele_gl keeps its questions in "train"
    _pull("belebele", "--lang", "gl", "--dev", "4", "--holdout", "6", "--from", str(tmp_path / "src"),
          "--out", str(tmp_path / "sets"))
    es = load_evalset(tmp_path / "sets" / "belebele_gl")
    assert es.card.origin["dataset"] == "proxectonos/belebele_gl" and all(it.gold == 1 for it in es.items)


def test_xstorycloze_train_is_dev_and_eval_is_holdout(tmp_path):
    def story(i, split):
        return {"story_id": f"{split}{i}", "input_sentence_1": "Ane etxera joan zen.", "input_sentence_2": "Gosea zuen.",
                "input_sentence_3": "Hozkailua ireki zuen.", "input_sentence_4": "Hutsik zegoen.",
                "sentence_quiz1": "Dendara joan zen.", "sentence_quiz2": "Igerian hasi zen.",
                "answer_right_ending": 1 + i % 2}
    _jsonl(tmp_path / "src" / "train.jsonl", [story(i, "t") for i in range(12)])
    _jsonl(tmp_path / "src" / "eval.jsonl", [story(i, "e") for i in range(40)])
    _pull("xstorycloze", "--lang", "eu", "--dev", "10", "--holdout", "25", "--from", str(tmp_path / "src"),
          "--out", str(tmp_path / "sets"))
    es = load_evalset(tmp_path / "sets" / "xstorycloze_eu")
    assert len(es.select("dev")) == 10 and len(es.select("holdout")) == 25
    assert all("-dev-" in it.id for it in es.select("dev"))
    it = es.select("dev")[0]
    assert it.prompt(es.card) == "Ane etxera joan zen. Gosea zuen. Hozkailua ireki zuen. Hutsik zegoen."
    assert it.choices == ("Dendara joan zen.", "Igerian hasi zen.")
    guard_test_splits([es])  # train split as dev: allowed


def test_ifeval_maps_instructions_and_drops_what_it_cannot_check(tmp_path, capsys):
    keys = ["keywords", "num_words", "relation", "num_bullets", "postscript_marker", "language", "end_phrase"]

    def kw(**given):  # the datasets' None-padded kwargs
        return {k: given.get(k) for k in keys}
    rows = [
        {"key": 1, "prompt": "Escribe sobre Madrid en menos de 50 palabras.",
         "instruction_id_list": ["length_constraints:number_words"], "kwargs": [kw(num_words=50, relation="less than")]},
        {"key": 2, "prompt": "Tres viñetas y una posdata P.D.",
         "instruction_id_list": ["detectable_format:number_bullet_lists", "detectable_content:postscript"],
         "kwargs": [kw(num_bullets=3), kw(postscript_marker="P.D.")]},
        {"key": 3, "prompt": "Responde con 'Mi respuesta es sí.'",
         "instruction_id_list": ["detectable_format:constrained_response"], "kwargs": [kw()]},
        {"key": 4, "prompt": "Contesta en inglés y termina con 'Fin.'",
         "instruction_id_list": ["language:response_language", "startend:end_checker"],
         "kwargs": [kw(language="en"), kw(end_phrase="Fin.")]},
    ] + [{"key": 10 + i, "prompt": f"Menciona la palabra sol {i}.", "instruction_id_list": ["keywords:existence"],
          "kwargs": [kw(keywords=["sol"])]} for i in range(6)]
    _jsonl(tmp_path / "src" / "train.jsonl", rows)
    _pull("ifeval", "--lang", "es", "--dev", "5", "--holdout", "4", "--from", str(tmp_path / "src"),
          "--out", str(tmp_path / "sets"))
    assert "dropped 1 prompt(s): detectable_format:constrained_response" in capsys.readouterr().out
    es = load_evalset(tmp_path / "sets" / "ifeval_es")
    assert len(es.select("dev")) == 5 and len(es.select("holdout")) == 4
    by_key = {it.id: it for it in es.items}
    words = by_key["ifeval-es-1"].constraints[0]
    assert words.type == "words" and words.kwargs == {"max": 49}  # IFEval's "less than 50"
    assert by_key["ifeval-es-4"].language == "en"  # asked for English, so English is expected back
    assert [c.type for c in by_key["ifeval-es-2"].constraints] == ["bullets", "postscript"]
    with pytest.raises(UserError, match="IFEval"):
        guard_test_splits([es])


def test_ifeval_relations_mean_what_ifeval_means():
    c = parse_constraint(constraints(["keywords:frequency"], [{"keyword": "sol", "frequency": 2,
                                                                "relation": "at least"}])[0], "t")
    assert check(c, "El sol, el solar.") and not check(c, "El sol.")  # substring, as IFEval counts


def test_flores_is_text_for_bits_per_byte(tmp_path):
    _jsonl(tmp_path / "src" / "dev.jsonl", [{"id": i, "text": f"Esaldi bat {i}.", "iso_639_3": "eus"} for i in range(9)])
    _jsonl(tmp_path / "src" / "devtest.jsonl", [{"id": i, "text": f"Beste esaldi bat {i}."} for i in range(12)])
    _pull("flores", "--lang", "eu", "--dev", "5", "--holdout", "12", "--from", str(tmp_path / "src"),
          "--out", str(tmp_path / "sets"))
    es = load_evalset(tmp_path / "sets" / "flores_eu")
    assert es.card.kind == "perplexity" and es.card.metric == "bits_per_byte"
    assert len(es.select("dev")) == 5 and len(es.select("holdout")) == 12
    guard_test_splits([es])  # FLORES dev as dev: allowed (devtest is only the holdout)


def test_pull_errors_are_one_line(tmp_path, capsys):
    assert main(["evalset", "pull", "mmlu", "--lang", "eu"]) == 2
    assert "unknown eval-set source" in capsys.readouterr().err
    assert main(["evalset", "pull", "ifeval", "--lang", "eu", "--from", str(tmp_path)]) == 2
    assert "no 'eu' data" in capsys.readouterr().err
    assert main(["evalset", "pull", "flores", "--lang", "eu", "--from", str(tmp_path)]) == 2
    assert "no file for split 'dev'" in capsys.readouterr().err
