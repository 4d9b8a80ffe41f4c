"""`evomerge evalset pull` offline: fixtures in each dataset's real schema (columns, split names, file names as
lm-evaluation-harness's task files and the dataset cards give them, under tests/fixtures/evalsources/) go through
`datasets` into eval sets; the Hub calls are checked at the `datasets.load_dataset` boundary."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from evomerge.cli import main
from evomerge.errors import UserError
from evomerge.evalsets import guard_test_splits, load_evalset
from evomerge.evalsources.ifeval import constraints
from evomerge.verifiers import check, parse_constraint

FIXTURES = Path(__file__).parent / "fixtures" / "evalsources"


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as f:
            return [dict(r) for r in csv.DictReader(f, delimiter="\t")]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _pull(*args: str) -> None:
    assert main(["evalset", "pull", *args]) == 0


def _one_line_error(capsys, *args: str) -> str:
    """Run a pull that must fail on bad input: exit 2, one line on stderr, no traceback."""
    assert main(["evalset", "pull", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("evomerge: error: ")
    return err


def _constraints_by_id(es) -> dict[str, list[dict]]:
    return {it.id: [c.to_json() for c in it.constraints] for it in es.items}


# --- Belebele ---------------------------------------------------------------------------------------------------


def test_belebele_splits_by_passage(tmp_path, capsys):
    src = FIXTURES / "belebele_eus_Latn"  # facebook/belebele config eus_Latn, split test: 30 passages, 60 questions
    out = tmp_path / "sets"
    _pull("belebele", "--lang", "eu", "--dev", "20", "--holdout", "30", "--seed", "0", "--from", str(src),
          "--out", str(out))
    assert "wrote" in capsys.readouterr().out
    es = load_evalset(out / "belebele_eu")
    dev, hold = es.select("dev"), es.select("holdout")
    assert len(dev) == 20 and 27 <= len(hold) <= 30  # whole passages only: a split may come out a little short
    assert not {it.fields["passage"] for it in dev} & {it.fields["passage"] for it in hold}
    assert es.card.form == "letter" and es.card.license == "CC-BY-SA-4.0"
    assert es.card.origin["dataset"] == "facebook/belebele" and es.card.origin["config"] == "eus_Latn"
    assert es.card.origin["dev_split"] == "test"
    item = dev[0]
    assert item.prompt(es.card).startswith("P: ") and "\nQ: Zenbat datu" in item.prompt(es.card)
    assert item.prompt(es.card).endswith("\nAnswer:") and "\nD: " in item.prompt(es.card)
    assert all(it.gold == 2 for it in es.items)  # correct_answer_num "3" (text, as Belebele stores it)
    # Belebele is test data: the search refuses it as a dev set unless told
    with pytest.raises(UserError, match="facebook/belebele"):
        guard_test_splits([es])
    # same seed, same split; an existing set is not overwritten
    _pull("belebele", "--lang", "eu", "--dev", "20", "--holdout", "30", "--from", str(src), "--out", str(out),
          "--name", "again")
    assert (out / "again" / "items.jsonl").read_text() == (out / "belebele_eu" / "items.jsonl").read_text()
    assert "exists" in _one_line_error(capsys, "belebele", "--lang", "eu", "--from", str(src), "--out", str(out))


def test_belebele_galician_reads_its_published_file(tmp_path):
    # proxectonos/belebele_gl publishes one file, belebele_glg_Latn.jsonl, that `datasets` names split "train"
    src = FIXTURES / "belebele_gl"
    assert not (src / "train.jsonl").exists()
    _pull("belebele", "--lang", "gl", "--dev", "4", "--holdout", "16", "--from", str(src), "--out", str(tmp_path))
    es = load_evalset(tmp_path / "belebele_gl")
    assert es.card.origin["dataset"] == "proxectonos/belebele_gl" and es.card.origin["dev_split"] == "train"
    assert "config" not in es.card.origin and all(it.gold == 0 for it in es.items)
    assert len(es.items) == 20


# --- XStoryCloze ------------------------------------------------------------------------------------------------


def test_xstorycloze_train_is_dev_and_eval_is_holdout(tmp_path):
    src = FIXTURES / "xstory_cloze_eu"  # juletxara/xstory_cloze eu: train (12 here) and eval (30 here)
    _pull("xstorycloze", "--lang", "eu", "--dev", "10", "--holdout", "25", "--from", str(src), "--out", str(tmp_path))
    es = load_evalset(tmp_path / "xstorycloze_eu")
    assert len(es.select("dev")) == 10 and len(es.select("holdout")) == 25
    assert all("-dev-" in it.id for it in es.select("dev"))
    train = _rows(src / "train.jsonl")
    it = es.select("dev")[0]
    row = train[int(it.id.rsplit("-", 1)[1])]
    assert it.prompt(es.card) == " ".join(row[f"input_sentence_{k}"] for k in range(1, 5))
    assert it.choices == (row["sentence_quiz1"], row["sentence_quiz2"]) and it.gold == row["answer_right_ending"] - 1
    assert es.card.source == "juletxara/xstory_cloze eu @ refs/convert/parquet (XStoryCloze)"
    assert es.card.license == "CC-BY-SA-4.0" and es.card.origin["holdout_split"] == "eval"
    guard_test_splits([es])  # train split as dev: allowed


def test_xstorycloze_catalan_uses_config_ca(tmp_path):
    _pull("xstorycloze", "--lang", "ca", "--dev", "12", "--holdout", "30", "--from",
          str(FIXTURES / "xstorycloze_ca"), "--out", str(tmp_path))
    es = load_evalset(tmp_path / "xstorycloze_ca")
    assert es.card.origin["dataset"] == "projecte-aina/xstorycloze_ca" and es.card.origin["config"] == "ca"
    assert (es.card.origin["dev_split"], es.card.origin["holdout_split"]) == ("train", "eval")
    assert es.card.license == "CC-BY-4.0" and len(es.items) == 42


def test_xstorycloze_galician_reads_storycloze_columns_from_its_tsv_files(tmp_path):
    # proxectonos/xstorycloze_gl: XStoryCloze_{train,test}_gl.tsv, columns InputSentence1..4,
    # RandomFifthSentenceQuiz1/2, AnswerRightEnding (the KeyError 'input_sentence_1' of issue 14)
    src = FIXTURES / "xstorycloze_gl"
    _pull("xstorycloze", "--lang", "gl", "--dev", "12", "--holdout", "30", "--from", str(src), "--out", str(tmp_path))
    es = load_evalset(tmp_path / "xstorycloze_gl")
    assert (es.card.origin["dev_split"], es.card.origin["holdout_split"]) == ("train", "test")
    assert es.card.license == "CC-BY-4.0"
    test_rows = _rows(src / "XStoryCloze_test_gl.tsv")
    for it in es.select("holdout"):
        row = test_rows[int(it.id.rsplit("-", 1)[1])]
        assert it.prompt(es.card) == " ".join(row[f"InputSentence{k}"] for k in range(1, 5))
        assert it.choices == (row["RandomFifthSentenceQuiz1"], row["RandomFifthSentenceQuiz2"])
        assert it.gold == int(row["AnswerRightEnding"]) - 1
    assert {it.gold for it in es.items} == {0, 1}


# --- the Hub, at the `datasets` boundary ------------------------------------------------------------------------

_HUB_CASES = [
    # source, lang, fixture file per split, the load_dataset call expected for each split
    ("xstorycloze", "eu", {"train": "xstory_cloze_eu/train.jsonl", "eval": "xstory_cloze_eu/eval.jsonl"},
     lambda split: (("juletxara/xstory_cloze", None), {
         "split": split, "revision": "refs/convert/parquet",
         "data_files": {"train": "eu/train/*.parquet", "eval": "eu/eval/*.parquet"}})),
    ("xstorycloze", "ca", {"train": "xstorycloze_ca/train.jsonl", "eval": "xstorycloze_ca/eval.jsonl"},
     lambda split: (("projecte-aina/xstorycloze_ca", "ca"), {"split": split})),
    ("xstorycloze", "gl", {"train": "xstorycloze_gl/XStoryCloze_train_gl.tsv",
                           "test": "xstorycloze_gl/XStoryCloze_test_gl.tsv"},
     lambda split: (("proxectonos/xstorycloze_gl", None), {"split": split})),
    ("belebele", "eu", {"test": "belebele_eus_Latn/test.jsonl"},
     lambda split: (("facebook/belebele", "eus_Latn"), {"split": split})),
    ("belebele", "gl", {"train": "belebele_gl/belebele_glg_Latn.jsonl"},
     lambda split: (("proxectonos/belebele_gl", None), {"split": split})),
    ("flores", "eu", {"dev": "flores_plus_eus_Latn/dev.jsonl", "devtest": "flores_plus_eus_Latn/devtest.jsonl"},
     lambda split: (("openlanguagedata/flores_plus", "eus_Latn"), {"split": split})),
    ("ifeval", "en", {"train": "ifeval_en/train.jsonl"}, lambda split: (("google/IFEval", None), {"split": split})),
    ("ifeval", "es", {"test": "ifeval_es/test.jsonl"}, lambda split: (("BSC-LT/IFEval_es", None), {"split": split})),
    ("ifeval", "ca", {"test": "ifeval_ca/test.jsonl"},
     lambda split: (("projecte-aina/IFEval_ca", None), {"split": split})),
]


@pytest.mark.parametrize("source,lang,files,expected", _HUB_CASES, ids=[f"{c[0]}-{c[1]}" for c in _HUB_CASES])
def test_hub_pull_asks_datasets_for_the_real_location(tmp_path, monkeypatch, source, lang, files, expected):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append(((path, name), kwargs))
        return datasets.Dataset.from_list(_rows(FIXTURES / files[kwargs["split"]]))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    _pull(source, "--lang", lang, "--dev", "4", "--holdout", "6", "--out", str(tmp_path))
    assert calls == [expected(split) for split in files]
    assert load_evalset(tmp_path / f"{source}_{lang}").items


def test_hub_failure_is_one_line(tmp_path, monkeypatch, capsys):
    import datasets

    def offline(path, name=None, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub\n(ConnectError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    err = _one_line_error(capsys, "ifeval", "--lang", "es", "--out", str(tmp_path))
    assert "BSC-LT/IFEval_es:test" in err and "--from" in err


# --- IFEval -----------------------------------------------------------------------------------------------------


def test_ifeval_spanish_prefixed_ids_and_spanish_instructions(tmp_path, capsys):
    # BSC-LT/IFEval_es, split test: `es:` ids from lm-eval's multilingual registry, every one mapped
    src = FIXTURES / "ifeval_es"
    n_rows = len(_rows(src / "test.jsonl"))
    _pull("ifeval", "--lang", "es", "--dev", "8", "--holdout", "20", "--from", str(src), "--out", str(tmp_path))
    assert "dropped" not in capsys.readouterr().out
    es = load_evalset(tmp_path / "ifeval_es")
    assert len(es.items) == n_rows and es.card.license == "CC-BY-4.0" and es.card.max_new_tokens == 1280
    assert (es.card.origin["dataset"], es.card.origin["dev_split"]) == ("BSC-LT/IFEval_es", "test")
    c = _constraints_by_id(es)
    assert c["ifeval-es-1000"] == [{"type": "no_commas"}, {"type": "highlights", "min": 3},
                                   {"type": "words", "min": 300}]
    assert c["ifeval-es-1001"] == [{"type": "words", "max": 300}]  # the es registry's "less than" is <=
    assert c["ifeval-es-1002"] == [{"type": "contains_any", "options": ["Sí.", "No.", "Quizás."]}]
    assert c["ifeval-es-1003"] == [{"type": "uppercase", "language": "es"}]
    assert c["ifeval-es-1004"] == [{"type": "lowercase", "language": "es"}]
    assert c["ifeval-es-1005"] == [{"type": "enclosed", "open": "¿", "close": "?"},
                                   {"type": "enclosed", "open": "¡", "close": "!"}]
    assert c["ifeval-es-1006"] == [{"type": "words_containing", "chars": "ñ", "min": 3, "max": 3}]
    assert c["ifeval-es-1007"] == [{"type": "words_containing", "chars": "ü", "min": 2, "max": 2}]
    assert c["ifeval-es-1008"] == [{"type": "words_containing", "chars": "áéíóú", "min": 10}]
    assert c["ifeval-es-1009"] == [{"type": "sections", "min": 4, "marker": "SECCIÓN"}]
    assert c["ifeval-es-1010"] == [{"type": "placeholders", "min": 5}, {"type": "postscript", "marker": "P.D."}]
    assert c["ifeval-es-1012"] == [{"type": "letter_count", "letter": "t", "max": 2}, {"type": "sentences", "max": 3}]
    by_id = {it.id: it for it in es.items}
    assert by_id["ifeval-es-1011"].language == "kn"  # asked for Kannada, so Kannada is expected back
    assert by_id["ifeval-es-1000"].language == "es"
    # verdicts mean what the es registry means
    upper = by_id["ifeval-es-1003"].constraints[0]
    assert check(upper, "LA LLUVIA CAE SOBRE LOS TEJADOS DE LA CIUDAD Y NOSOTROS CANTAMOS BAJO EL PARAGUAS.")
    assert not check(upper, "THE RAIN FALLS ON THE ROOFS OF THE CITY AND WE SING UNDER THE UMBRELLA.")
    assert not check(upper, "La lluvia cae sobre los tejados de la ciudad y nosotros cantamos bajo el paraguas.")
    enie = by_id["ifeval-es-1006"].constraints[0]
    assert check(enie, "El niño sueña con la montaña cada año.") is False  # four words with ñ, not three
    assert check(enie, "El niño sueña con la montaña.")
    questions = by_id["ifeval-es-1005"].constraints
    assert all(check(q, "¿Conoces mi pueblo? ¡Es precioso!") for q in questions)
    assert not check(questions[0], "Conoces mi pueblo? Es precioso!")


def test_ifeval_catalan_prefixed_ids(tmp_path, capsys):
    src = FIXTURES / "ifeval_ca"  # projecte-aina/IFEval_ca, split test, `ca:` ids
    _pull("ifeval", "--lang", "ca", "--dev", "4", "--holdout", "20", "--from", str(src), "--out", str(tmp_path))
    assert "dropped" not in capsys.readouterr().out
    es = load_evalset(tmp_path / "ifeval_ca")
    assert len(es.items) == len(_rows(src / "test.jsonl")) and es.card.license == "CC-BY-4.0"
    c = _constraints_by_id(es)
    assert c["ifeval-ca-1001"] == [{"type": "uppercase", "language": "ca"}]
    assert c["ifeval-ca-1002"] == [{"type": "lowercase", "language": "ca"}]
    assert c["ifeval-ca-1003"] == [{"type": "title"}, {"type": "sentences", "max": 5}]
    assert c["ifeval-ca-1005"] == [{"type": "words_containing", "chars": "ü", "min": 2, "max": 2}]
    assert c["ifeval-ca-1007"] == [{"type": "keyword_count", "word": "lava", "match": "substring", "min": 3}]
    upper = parse_constraint(c["ifeval-ca-1001"][0], "t")
    assert check(upper, "AQUESTA ÉS UNA CANÇÓ SOBRE LA PLUJA QUE CAU LENTAMENT SOBRE LA CIUTAT I ELS CARRERS.")
    assert not check(upper, "ESTA ES UNA CANCIÓN SOBRE LA LLUVIA QUE CAE LENTAMENTE SOBRE LA CIUDAD Y LAS CALLES.")


def test_ifeval_english_follows_google(tmp_path):
    src = FIXTURES / "ifeval_en"  # google/IFEval, split train, None-padded kwargs
    _pull("ifeval", "--lang", "en", "--dev", "5", "--holdout", "20", "--from", str(src), "--out", str(tmp_path))
    es = load_evalset(tmp_path / "ifeval_en")
    assert len(es.items) == 10 and es.card.license == "Apache-2.0"
    c = _constraints_by_id(es)
    assert c["ifeval-en-1001"] == [{"type": "words", "max": 299}]  # google's "less than 300" is < 300
    assert c["ifeval-en-1002"] == [{"type": "contains_any", "options": ["My answer is yes.", "My answer is no.",
                                                                         "My answer is maybe."]}]
    assert c["ifeval-en-1003"] == [{"type": "uppercase", "language": "en"}]
    assert c["ifeval-en-1004"] == [{"type": "sections", "min": 4, "marker": "SECTION"}]  # IFEval: at least
    assert c["ifeval-en-1006"] == [{"type": "letter_count", "letter": "t", "max": 1}]
    with pytest.raises(UserError, match="IFEval"):
        guard_test_splits([es])


@pytest.mark.parametrize("lang,options,marker", [
    ("eu", ["Nire erantzuna baiezkoa da.", "Nire erantzuna ezezkoa da.", "Nire erantzuna agian da."], "ATALA"),
    ("gl", ["A resposta é si", "A resposta é non", "A resposta é pode ser"], "Sección"),
])
def test_ifeval_basque_and_galician_come_only_from_the_runners_file(tmp_path, capsys, lang, options, marker):
    # no licence stated on github.com/eneko98/Iber-IFEval: evomerge never downloads it, the user does
    err = _one_line_error(capsys, "ifeval", "--lang", lang, "--out", str(tmp_path))
    assert f"data/input_data.{lang}.jsonl" in err and "eneko98/Iber-IFEval" in err and "--from DIR" in err
    # the file as published (google's unprefixed ids, compact kwargs), under its own name
    src = FIXTURES / f"ifeval_{lang}"
    assert (src / f"input_data.{lang}.jsonl").exists()
    _pull("ifeval", "--lang", lang, "--dev", "4", "--holdout", "20", "--from", str(src), "--out", str(tmp_path))
    assert "dropped" not in capsys.readouterr().out
    es = load_evalset(tmp_path / f"ifeval_{lang}")
    assert len(es.items) == len(_rows(src / f"input_data.{lang}.jsonl"))
    assert es.card.license.startswith("none stated") and es.card.origin["dataset"] == "github.com/eneko98/Iber-IFEval"
    assert es.card.source == f"github.com/eneko98/Iber-IFEval data/input_data.{lang}.jsonl (IFEval)"
    types = [c for cs in _constraints_by_id(es).values() for c in cs]
    # the runner checks english_capital/lowercase in the set's own language
    assert {"type": "uppercase", "language": lang} in types and {"type": "lowercase", "language": lang} in types
    assert {"type": "contains_any", "options": options} in types
    assert any(c["type"] == "sections" and c["marker"] == marker and "min" in c for c in types)
    with pytest.raises(UserError, match="refusing"):
        guard_test_splits([es])


def test_ifeval_drops_only_what_cannot_be_checked_and_counts_it(tmp_path, capsys):
    rows = _rows(FIXTURES / "ifeval_es" / "test.jsonl")
    kw = dict(rows[1]["kwargs"][0])
    bad = [
        {"key": 2000, "prompt": "Reformula el texto.", "instruction_id_list": ["es:detectable_format:rephrase"],
         "kwargs": [{k: None for k in kw}]},
        {"key": 2001, "prompt": "Escriu en català.", "instruction_id_list": ["ca:punctuation:no_comma"],
         "kwargs": [{k: None for k in kw}]},
        {"key": 2002, "prompt": "Escribe mucho.", "instruction_id_list": ["es:length_constraints:number_words"],
         "kwargs": [{**{k: None for k in kw}, "num_words": 300, "relation": "más de"}]},
        {"key": 2005, "prompt": "Usa la palabra sol.", "instruction_id_list": ["es:keywords:frequency"],
         "kwargs": [{**{k: None for k in kw}, "frequency": 2, "relation": "at least"}]},
        {"key": 2003, "prompt": "Responde en klingon.", "instruction_id_list": ["es:language:response_language"],
         "kwargs": [{**{k: None for k in kw}, "language": "tlh"}]},
        {"key": 2004, "prompt": "Otra en klingon.", "instruction_id_list": ["es:language:response_language"],
         "kwargs": [{**{k: None for k in kw}, "language": "tlh"}]},
    ]
    _jsonl(tmp_path / "src" / "test.jsonl", rows + bad)
    _pull("ifeval", "--lang", "es", "--dev", "5", "--holdout", "50", "--from", str(tmp_path / "src"),
          "--out", str(tmp_path / "sets"))
    out = capsys.readouterr().out
    assert "dropped 1 prompt(s): es:detectable_format:rephrase" in out
    assert "dropped 1 prompt(s): ca:punctuation:no_comma (ca instruction in a es set)" in out
    assert "dropped 1 prompt(s): es:length_constraints:number_words (relation 'más de')" in out
    assert "dropped 1 prompt(s): es:keywords:frequency (arguments: KeyError 'keyword')" in out
    assert "dropped 2 prompt(s): language 'tlh' unknown to the offline identifier" in out
    assert len(load_evalset(tmp_path / "sets" / "ifeval_es").items) == len(rows)


def test_ifeval_relations_mean_what_each_registry_means():
    google = parse_constraint(constraints(["keywords:frequency"], [{"keyword": "sol", "frequency": 2,
                                                                     "relation": "at least"}])[0], "t")
    assert check(google, "El sol, el solar.") and not check(google, "El sol.")  # substring, as IFEval counts
    fewer = parse_constraint(constraints(["keywords:letter_frequency"], [{"letter": "a", "let_frequency": 3,
                                                                          "let_relation": "less than"}])[0], "t")
    at_most = parse_constraint(constraints(["es:keywords:letter_frequency"], [{"letter": "a", "let_frequency": 3,
                                                                               "let_relation": "less than"}],
                                           "es")[0], "t")
    assert not check(fewer, "a a a") and check(at_most, "a a a") and not check(at_most, "a a a a")


# --- FLORES+ ----------------------------------------------------------------------------------------------------


def test_flores_is_text_for_bits_per_byte(tmp_path):
    src = FIXTURES / "flores_plus_eus_Latn"
    _pull("flores", "--lang", "eu", "--dev", "5", "--holdout", "12", "--from", str(src), "--out", str(tmp_path))
    es = load_evalset(tmp_path / "flores_eu")
    assert es.card.kind == "perplexity" and es.card.metric == "bits_per_byte" and es.card.license == "CC-BY-SA-4.0"
    assert len(es.select("dev")) == 5 and len(es.select("holdout")) == 12
    assert es.select("dev")[0].fields["text"].startswith("dev esaldia")
    guard_test_splits([es])  # FLORES dev as dev: allowed (devtest is only the holdout)


# --- rows that do not fit the schema ----------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_row_without_a_column_names_dataset_split_row_and_column(tmp_path, capsys):
    # the Galician TSV without AnswerRightEnding
    src = _copy(FIXTURES / "xstorycloze_gl", tmp_path / "gl")
    train = src / "XStoryCloze_train_gl.tsv"
    lines = train.read_text(encoding="utf-8").splitlines()
    train.write_text("\n".join("\t".join(line.split("\t")[:-1]) for line in lines) + "\n", encoding="utf-8")
    err = _one_line_error(capsys, "xstorycloze", "--lang", "gl", "--from", str(src), "--out", str(tmp_path))
    assert "proxectonos/xstorycloze_gl:train: row 0: no column 'AnswerRightEnding'" in err
    # Galician rows fed as Basque: the snake_case column is named
    _jsonl(tmp_path / "eu" / "train.jsonl", _rows(FIXTURES / "xstorycloze_gl" / "XStoryCloze_train_gl.tsv"))
    err = _one_line_error(capsys, "xstorycloze", "--lang", "eu", "--from", str(tmp_path / "eu"),
                          "--out", str(tmp_path))
    assert "juletxara/xstory_cloze/eu:train: row 0: no column 'input_sentence_1'" in err


@pytest.mark.parametrize("source,lang,fixture,file,row_edit,expected", [
    ("belebele", "eu", "belebele_eus_Latn", "test.jsonl", {"correct_answer_num": "5"},
     "facebook/belebele/eus_Latn:test: row 0: correct_answer_num: must be an integer from 1 to 4"),
    ("belebele", "eu", "belebele_eus_Latn", "test.jsonl", {"question": None},
     "facebook/belebele/eus_Latn:test: row 0: column 'question' is empty"),
    ("xstorycloze", "ca", "xstorycloze_ca", "train.jsonl", {"sentence_quiz2": ""},
     "projecte-aina/xstorycloze_ca/ca:train: row 0: sentence_quiz2: must be non-empty text"),
    ("ifeval", "es", "ifeval_es", "test.jsonl", {"kwargs": []},
     "BSC-LT/IFEval_es:test: row 0: kwargs: has 0 entries for 3 instructions"),
    ("ifeval", "en", "ifeval_en", "train.jsonl", {"instruction_id_list": "punctuation:no_comma"},
     "google/IFEval:train: row 0: instruction_id_list: must be a list"),
])
def test_bad_cells_are_one_line_errors(tmp_path, capsys, source, lang, fixture, file, row_edit, expected):
    rows = _rows(FIXTURES / fixture / file)
    rows[0] = {**rows[0], **row_edit}
    src = _copy(FIXTURES / fixture, tmp_path / "src")
    _jsonl(src / file, rows)
    err = _one_line_error(capsys, source, "--lang", lang, "--dev", "100", "--holdout", "100", "--from", str(src),
                          "--out", str(tmp_path / "sets"))
    assert expected in err


def test_an_ifeval_row_without_kwargs(tmp_path, capsys):
    rows = [{k: v for k, v in r.items() if k != "kwargs"} for r in _rows(FIXTURES / "ifeval_en" / "train.jsonl")]
    _jsonl(tmp_path / "src" / "train.jsonl", rows)
    err = _one_line_error(capsys, "ifeval", "--lang", "en", "--from", str(tmp_path / "src"), "--out", str(tmp_path))
    assert "google/IFEval:train: row 0: no column 'kwargs'" in err and "instruction_id_list" in err


def test_pull_errors_are_one_line(tmp_path, capsys):
    assert "unknown eval-set source" in _one_line_error(capsys, "mmlu", "--lang", "eu")
    assert "no 'fr' data" in _one_line_error(capsys, "ifeval", "--lang", "fr")
    assert "no file for split 'dev'" in _one_line_error(capsys, "flores", "--lang", "eu", "--from", str(tmp_path))
    assert "not a directory" in _one_line_error(capsys, "flores", "--lang", "eu", "--from", str(tmp_path / "nope"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "dev.jsonl").write_text('{"id": 0, "text": "ondo"}\n{not json\n')
    assert "junk/dev.jsonl:2: not a JSON object" in _one_line_error(capsys, "flores", "--lang", "eu", "--from",
                                                                    str(tmp_path / "junk"), "--out", str(tmp_path))
    (tmp_path / "junk" / "dev.jsonl").unlink()
    (tmp_path / "junk" / "dev.parquet").write_bytes(b"PAR1 not really parquet")
    assert "dev.parquet: cannot be read as parquet" in _one_line_error(
        capsys, "flores", "--lang", "eu", "--from", str(tmp_path / "junk"), "--out", str(tmp_path))
