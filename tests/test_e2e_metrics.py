"""E2E NLG metrics: hand-computed BLEU/NIST/ROUGE_L/CIDEr, edge cases, E2EMetric, and the real E2E test set."""

from __future__ import annotations

import csv
import math
import random
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from kasa_lightning.metrics import e2e
from kasa_lightning.metrics.e2e import E2EMetric, e2e_scores, mteval_tokenize, ptb_tokenize

NO_JAVA = ("BLEU", "NIST", "ROUGE_L", "CIDEr")
try:
    import pycocoevalcap  # noqa: F401

    HAS_COCO = True
except ImportError:
    HAS_COCO = False
requires_java = pytest.mark.skipif(
    shutil.which("java") is None or not HAS_COCO, reason="METEOR needs Java and pycocoevalcap"
)
E2E_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "e2e"


def scores(pred: list[str], refs: list[list[str]], *metrics: str) -> dict[str, float]:
    return e2e_scores(pred, refs, metrics=metrics or NO_JAVA)


# ------------------------------------------------------------------------------------------- tokenisers
def test_mteval_tokenisation() -> None:
    # ASCII-only lower-casing (Perl tr/A-Z/a-z/), punctuation split, dash split after a digit, . and , kept in numbers
    assert mteval_tokenize("The Eagle's price is £20-25, isn't it?") == [
        "the", "eagle's", "price", "is", "£20", "-", "25", ",", "isn't", "it", "?"
    ]  # fmt: skip
    assert mteval_tokenize("ÉCOLE costs 3.5, or 2,000.") == ["École", "costs", "3.5", ",", "or", "2,000", "."]
    assert mteval_tokenize("  a\n(b)&amp;c ") == ["a", "(", "b", ")", "&", "c"]


def test_ptb_tokenisation() -> None:
    # coco-caption: PTBTokenizer -lowerCase, then punctuation tokens dropped; brackets come out as -lrb- and stay
    assert ptb_tokenize("The Eagle's price is £20-25, isn't it?") == "the eagle 's price is # 20-25 is n't it"
    assert (
        ptb_tokenize("Don't go (cheap)... It's 3.5 stars; 5-star!")
        == "do n't go -lrb- cheap -rrb- it 's 3.5 stars 5-star"
    )
    assert ptb_tokenize("in the city center., near St. Mary") == "in the city center. near st. mary"
    assert ptb_tokenize("") == ""


# ------------------------------------------------------------------------------------------------ BLEU
def test_bleu_by_hand_single_segment() -> None:
    # hyp: the cat sat on the mat .  (7 tokens) vs r1: the cat is on the mat . (7), r2: there is a cat on the mat . (8)
    # 1-grams: the x2 (r1 has 2), cat, on, mat, . match; sat does not      -> 6/7
    # 2-grams: the cat, on the, the mat, mat . match; cat sat, sat on not  -> 4/6
    # 3-grams: on the mat, the mat . match                                  -> 2/5
    # 4-grams: on the mat .                                                 -> 1/4
    # closest reference length 7 = hypothesis length -> brevity penalty 1
    got = scores(["The cat sat on the mat."], [["The cat is on the mat.", "There is a cat on the mat."]], "BLEU")
    assert got["BLEU"] == pytest.approx((6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25, abs=1e-12)


def test_bleu_corpus_level_sums_counts() -> None:
    # segment 2: "a dog" vs ["a dog runs fast", "the dog"]: 1-grams 2/2, 2-grams 1/1, no 3/4-grams; closest length 2
    # corpus: (6+2)/(7+2), (4+1)/(6+1), 2/5, 1/4 -- counts are summed over segments, not scores averaged
    preds = ["The cat sat on the mat.", "a dog"]
    refs = [["The cat is on the mat.", "There is a cat on the mat."], ["a dog runs fast", "the dog"]]
    assert scores(preds, refs, "BLEU")["BLEU"] == pytest.approx((8 / 9 * 5 / 7 * 2 / 5 * 1 / 4) ** 0.25, abs=1e-12)


def test_bleu_brevity_penalty_and_smoothing() -> None:
    # hyp "the cat on the mat" (5) vs r1 "the cat is on the mat" (6), r2 "a cat is on a mat today" (8)
    # 1-grams 5/5; 2-grams: the cat, on the, the mat -> 3/4; 3-grams: on the mat -> 1/3
    # 4-grams: 0/2 -> mteval smoothing 1/(2^1 * 2); closest length 6 -> BP = exp(1 - 6/5)
    got = scores(["the cat on the mat"], [["the cat is on the mat", "a cat is on a mat today"]], "BLEU")["BLEU"]
    assert got == pytest.approx(math.exp(1 - 6 / 5) * (1 * 3 / 4 * 1 / 3 * 1 / 4) ** 0.25, abs=1e-12)


def test_bleu_closest_length_ties_to_shorter_and_skips_empty_references() -> None:
    # hyp length 5, references of length 4 and 6: tie -> 4 -> no penalty; every n-gram is in the 6-word reference
    assert scores(["a b c d e"], [["a b c d", "a b c d e f"]], "BLEU")["BLEU"] == pytest.approx(1.0)
    # an empty reference (as the script pads MRs with fewer references) is no candidate for the closest length
    assert scores(["a b c d e"], [["a b c d e f", ""]], "BLEU")["BLEU"] == pytest.approx(math.exp(1 - 6 / 5))
    # orders with no hypothesis n-grams are skipped by mteval: a 2-word exact match scores 1
    assert scores(["a b"], [["a b", "a b c"]], "BLEU")["BLEU"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ NIST
BETA = -math.log(0.5) / math.log(1.5) ** 2  # mteval's length penalty: 0.5 at 1.5 times shorter than average


def test_nist_by_hand() -> None:
    # references "a b c", "a c": 1-gram counts a:2 b:1 c:2 (5 words), 2-grams "a b":1 "b c":1 "a c":1
    # info(a) = log2(5/2), info(b) = log2(5/1), info(a b) = log2(count(a) / count(a b)) = log2(2/1) = 1
    # hyp "a b": 1-gram info (log2 2.5 + log2 5) / 2 words, 2-gram info 1 / 1 bigram, 3..5-grams none
    # length penalty: hyp 2 words vs average reference length 5 / 2 references -> ratio 0.8
    raw = math.log2(12.5) / 2 + 1.0
    expected = raw * math.exp(-BETA * math.log(0.8) ** 2)
    assert scores(["a b"], [["a b c", "a c"]], "NIST")["NIST"] == pytest.approx(expected, abs=1e-12)


def test_nist_average_reference_length_counts_each_segments_references() -> None:
    # references: "a b c d" | "b", "e", "f"  -> 7 words; 1-gram counts a:1 b:2 c:1 d:1 e:1 f:1
    # hyps "a", "b": info log2(7/1) and log2(7/2) over 2 words; no 2-grams
    # mteval-v13a-sig: (1 + 3) non-empty references over 2 segments -> 2 per segment -> average length 7 / 2
    # (not 7 / 3, the padded number of reference sets the script writes)
    raw = (math.log2(7) + math.log2(3.5)) / 2
    expected = raw * math.exp(-BETA * math.log(2 / (7 / 2)) ** 2)
    assert scores(["a", "b"], [["a b c d"], ["b", "e", "f"]], "NIST")["NIST"] == pytest.approx(expected, abs=1e-12)


def test_nist_short_outputs_by_hand_from_the_scripts_formula() -> None:
    # Three segments with 2, 1 and 2 references, one of them empty; outputs much shorter than the references.
    refs = [["a b c d", "a b e"], ["c d e f"], ["a e", ""]]
    hyps = ["a b", "c", "a e"]
    # compute_ngram_info over all references: 13 words; a:3 b:2 c:2 d:2 e:3 f:1; "a b":2 "a e":1 (others unused)
    # matched 1-grams: a, b | c | a, e  -> info log2(13/3), log2(13/2) | log2(13/2) | log2(13/3), log2(13/3)
    # matched 2-grams: "a b" | - | "a e" -> info log2(count(a)/count(a b)) = log2(3/2), log2(3/1)
    # test counts: 5 unigrams, 2 bigrams, no longer n-grams
    raw = (3 * math.log2(13 / 3) + 2 * math.log2(13 / 2)) / 5 + (math.log2(1.5) + math.log2(3)) / 2
    # score_system: nist_score(cum_ref_count / cum_seg_count, ...), cum_ref_count = 2 + 1 + 1 non-empty references,
    # cum_seg_count = 3; length ratio = tst words / (ref words / (4 / 3)) = 5 / 9.75
    ratio = 5 / (13 / (4 / 3))
    expected = raw * math.exp(-BETA * math.log(ratio) ** 2)
    got = scores(hyps, refs, "NIST")["NIST"]
    assert got == pytest.approx(expected, abs=1e-12)
    # dividing by the padded number of reference sets (2) would give the milder penalty of ratio 5 / 6.5
    padded = raw * math.exp(-BETA * math.log(5 / 6.5) ** 2)
    assert padded > 4 * got
    # one-word outputs against long references: near zero, as the script gives
    long_refs = [["there is a cheap family friendly pub near the river", "a pub by the river"], ["it is cheap"]]
    short = scores(["pub", "cheap"], long_refs, "NIST")["NIST"]
    # 10 + 5 + 3 = 18 reference words, (2 + 1) / 2 references per segment -> average length 12; 2 output words
    info = math.log2(18 / 2) + math.log2(18 / 2)  # "pub" and "cheap" each occur twice in the references
    assert short == pytest.approx(info / 2 * math.exp(-BETA * math.log(2 / 12) ** 2), abs=1e-12)
    assert short < 0.1


def test_nist_prefix_zero_uses_all_reference_words() -> None:
    # mteval's ngram info tests the prefix string for truth; the prefix "0" is false in Perl, so the bigram
    # "0 stars" is weighted against all 3 reference words: info log2(3/1), not log2(count("0") / 1) = 0
    # unigrams: log2 3 each over 2 words; bigram log2 3 over 1; length ratio 2/3 -> penalty exactly 0.5
    expected = (2 * math.log2(3) / 2 + math.log2(3)) * 0.5
    assert scores(["0 stars"], [["0 stars x"]], "NIST")["NIST"] == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------------- ROUGE_L
def test_rouge_l_by_hand() -> None:
    # candidate (PTB): the cat sat on the mat (6 tokens)
    # ref A "the cat" (2): LCS 2 -> P 2/6, R 2/2;  ref B "the dog sat on the mat today" (7): LCS 5 -> P 5/6, R 5/7
    # pycocoevalcap takes the best precision (5/6, B) and the best recall (1, A), even from different references
    p, r, b2 = 5 / 6, 1.0, 1.2**2
    one = (1 + b2) * p * r / (r + b2 * p)
    got = scores(["The cat sat on the mat."], [["The cat", "the dog sat on the mat today"]], "ROUGE_L")
    assert got["ROUGE_L"] == pytest.approx(one, abs=1e-12)
    # a second segment with no overlap scores 0: the corpus score is the mean of segment scores
    got = scores(["The cat sat on the mat.", "x y"], [["The cat", "the dog sat on the mat today"], ["z"]], "ROUGE_L")
    assert got["ROUGE_L"] == pytest.approx(one / 2, abs=1e-12)


def test_lcs_matches_dynamic_programming() -> None:
    def dp(a: list[str], b: list[str]) -> int:
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    rng = random.Random(0)
    for _ in range(2000):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 15))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 15))]
        assert e2e._lcs_length(a, b) == dp(a, b) == e2e._lcs_length(b, a)


# ----------------------------------------------------------------------------------------------- CIDEr
def test_cider_exact_match_is_not_10() -> None:
    # 2 MRs -> idf = ln 2 - ln df. MR 1: "a b" vs "a b": 1-gram cosine 1, 2-gram cosine 1, no 3/4-grams (0),
    # mean over the 4 orders 0.5, x10 -> 5. MR 2: "c" vs "d": 0. Corpus: 2.5
    assert scores(["a b", "c"], [["a b"], ["d"]], "CIDEr")["CIDEr"] == pytest.approx(2.5, abs=1e-12)


def test_cider_by_hand_idf_and_length_penalty() -> None:
    # MR 1: cand "a b c", refs "a b", "a c";  MR 2: cand "a", ref "a d".  N = 2 MRs, L = ln 2.
    # df(a) = 2 -> idf 0; every other n-gram df 1 (or 0 for "b c", "a b c", clamped to 1) -> idf L
    # cand vec: 1-grams a:0 b:L c:L (norm L*sqrt2), 2-grams "a b":L "b c":L (norm L*sqrt2), 3-gram L; length 2 bigrams
    # ref "a b": 1-gram b:L (norm L), 2-gram "a b":L (norm L); length 1 -> penalty exp(-1/72)
    #   cos1 = L*L / (L*sqrt2 * L) = 1/sqrt2, cos2 = 1/sqrt2, cos3 = cos4 = 0
    # ref "a c": cos1 = 1/sqrt2, "a c" not in cand -> cos2 = 0; same penalty
    # MR 1 = (sqrt2 + 1/sqrt2) * exp(-1/72) / 4 orders / 2 refs * 10;  MR 2: a has idf 0 -> 0
    mr1 = (math.sqrt(2) + 1 / math.sqrt(2)) * math.exp(-1 / 72) / 4 / 2 * 10
    got = scores(["a b c", "a"], [["a b", "a c"], ["a d"]], "CIDEr")["CIDEr"]
    assert got == pytest.approx(mr1 / 2, abs=1e-12)


def test_cider_single_mr_is_zero() -> None:
    # idf = ln(1) - ln(df) <= 0 ... = 0 for every reference n-gram: CIDEr needs a corpus
    assert scores(["a b c"], [["a b c"]], "CIDEr")["CIDEr"] == 0.0


# ------------------------------------------------------------------------------------------ edge cases
def test_identical_prediction() -> None:
    got = scores(["The Eagle is a cheap coffee shop.", "Near the river, Aromi serves food."],
                 [["The Eagle is a cheap coffee shop.", "x"], ["Near the river, Aromi serves food."]])  # fmt: skip
    assert got["BLEU"] == pytest.approx(1.0)
    assert got["ROUGE_L"] == pytest.approx(1.0)
    assert got["NIST"] > 0 and got["CIDEr"] > 0
    assert list(got) == list(NO_JAVA)


def test_empty_prediction_scores_zero() -> None:
    assert scores([""], [["a b c"]]) == {"BLEU": 0.0, "NIST": 0.0, "ROUGE_L": 0.0, "CIDEr": 0.0}
    assert scores(["", "x"], [["a b"], ["c d"]], "CIDEr") == {"CIDEr": 0.0}


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        e2e_scores(["a", "b"], [["a"]], metrics=NO_JAVA)
    with pytest.raises(ValueError, match="at least one reference"):
        e2e_scores(["a"], [[]], metrics=NO_JAVA)
    with pytest.raises(TypeError, match="list of lists"):
        e2e_scores(["a", "b"], ["a", "b"], metrics=NO_JAVA)
    with pytest.raises(ValueError, match="empty corpus"):
        e2e_scores([], [], metrics=NO_JAVA)
    with pytest.raises(ValueError, match="subset"):
        e2e_scores(["a"], [["a"]], metrics=("BLEU", "SPICE"))


def test_meteor_missing_dependencies_raise_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e.shutil, "which", lambda name: None)
    if HAS_COCO:
        with pytest.raises(RuntimeError, match="default-jre-headless"):
            e2e_scores(["a"], [["a"]])
    monkeypatch.setitem(sys.modules, "pycocoevalcap.meteor.meteor", None)  # import fails
    with pytest.raises(ImportError, match=r"kasa-lightning\[e2e\]"):
        e2e_scores(["a"], [["a"]])
    assert set(e2e_scores(["a"], [["a"]], metrics=NO_JAVA)) == set(NO_JAVA)  # the subset needs neither


@requires_java
def test_meteor_orders_outputs() -> None:
    refs = [["The Eagle is a cheap coffee shop near the river."]]
    same = e2e_scores(["The Eagle is a cheap coffee shop near the river."], refs, metrics=("METEOR",))["METEOR"]
    close = e2e_scores(["The Eagle is a coffee shop by the river."], refs, metrics=("METEOR",))["METEOR"]
    other = e2e_scores(["Blue Spice serves pasta."], refs, metrics=("METEOR",))["METEOR"]
    assert 1.0 >= same > close > other >= 0.0


# ------------------------------------------------------------------------------------------ E2EMetric
def test_metric_accumulates_batches() -> None:
    preds = ["The cat sat on the mat.", "a dog", "the cat on the mat"]
    refs = [["The cat is on the mat.", "There is a cat."], ["a dog runs fast", "the dog"], ["the cat is on the mat"]]
    metric = E2EMetric(metrics=NO_JAVA).to(torch.device("cpu"))  # .to must leave the string states alone
    batch = metric(preds[:2], refs[:2])  # forward: scores of this batch alone, state kept
    assert batch == e2e_scores(preds[:2], refs[:2], metrics=NO_JAVA)
    metric.update(preds[2:], refs[2:])
    got = metric.compute()
    assert got == e2e_scores(preds, refs, metrics=NO_JAVA)
    assert all(type(v) is float for v in got.values())
    metric.reset()
    metric.update(preds[2:], refs[2:])
    assert metric.compute() == e2e_scores(preds[2:], refs[2:], metrics=NO_JAVA)
    with pytest.raises(ValueError, match="subset"):
        E2EMetric(metrics=("BLEU", "TER"))


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    metric = E2EMetric(metrics=NO_JAVA)
    shards = {0: (["a b c d", "x y"], [["a b c d e"], ["x y z", "x"]]), 1: (["e f"], [["e f g", "f"]])}
    metric.update(*shards[rank])
    torch.save(metric.compute(), Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two processes that import torch and kasa_lightning
def test_metric_gathers_strings_across_ranks(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    expected = e2e_scores(["a b c d", "x y", "e f"], [["a b c d e"], ["x y z", "x"], ["e f g", "f"]], metrics=NO_JAVA)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt") == pytest.approx(expected)


# -------------------------------------------------------------------------------------- real E2E data
@pytest.fixture(scope="module")
def e2e_test_set() -> tuple[list[str], list[list[str]]]:
    """First reference of each test-set MR as the "prediction", its other references as references."""
    path = E2E_DATA / "testset_w_refs.csv"
    if not path.is_file():
        pytest.skip(f"E2E data not found at {path}")
    groups: OrderedDict[str, list[str]] = OrderedDict()
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            groups.setdefault(row["mr"], []).append(row["ref"])
    usable = [refs for refs in groups.values() if len(refs) > 1]  # 616 of 630 MRs have a second reference
    return [refs[0] for refs in usable], [refs[1:] for refs in usable]


# measured with this module on testset_w_refs.csv (630 MRs, 4693 refs); BLEU and NIST agree to 1e-9 with a Perl
# transcription of mteval-v13a-sig.pl's scoring, ROUGE_L and CIDEr with pycocoevalcap's Rouge and Cider
MEASURED = {"BLEU": 0.604562, "NIST": 8.902889, "METEOR": 0.456309, "ROUGE_L": 0.638113, "CIDEr": 1.857224}


def test_real_data_scores(e2e_test_set: tuple[list[str], list[list[str]]]) -> None:
    preds, refs = e2e_test_set
    assert len(preds) == 616
    got = e2e_scores(preds, refs, metrics=NO_JAVA)
    assert 0.4 < got["BLEU"] < 0.8 and 6 < got["NIST"] < 11 and 0.5 < got["ROUGE_L"] < 0.8 and 1 < got["CIDEr"] < 3
    for name, value in got.items():
        assert value == pytest.approx(MEASURED[name], abs=1e-5), name


@pytest.mark.skipif(not HAS_COCO, reason="pycocoevalcap not installed")
def test_rouge_and_cider_match_pycocoevalcap_on_short_and_empty_outputs() -> None:
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs = [
        ["There is a cheap pub near the river.", "A cheap pub by the river.", "Cheap: a pub, riverside."],
        ["Fitzbillies serves Italian food.", "Italian food at Fitzbillies."],
        ["The Eagle is family friendly.", "The Eagle welcomes families.", "Families like The Eagle.", "Eagle."],
    ]
    gts = {i: [ptb_tokenize(r) for r in rs] for i, rs in enumerate(refs)}
    for candidates in (["", "Italian", "the eagle"], [".", "", ""], ["pub", "Fitzbillies serves Italian food.", ""]):
        res = {i: [ptb_tokenize(p)] for i, p in enumerate(candidates)}
        got = e2e_scores(candidates, refs, metrics=("ROUGE_L", "CIDEr"))
        assert got["ROUGE_L"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12), candidates
        assert got["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12), candidates


@pytest.mark.skipif(not HAS_COCO, reason="pycocoevalcap not installed")
def test_rouge_and_cider_match_pycocoevalcap(e2e_test_set: tuple[list[str], list[list[str]]]) -> None:
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    preds, refs = (x[:200] for x in e2e_test_set)  # pycocoevalcap's pure-Python LCS is slow: 200 MRs suffice
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(p.split(), rng.randint(0, len(p.split())))) for p in preds]
    for candidates in (preds, shuffled):
        gts = {i: [ptb_tokenize(r) for r in rs] for i, rs in enumerate(refs)}
        res = {i: [ptb_tokenize(p)] for i, p in enumerate(candidates)}
        got = e2e_scores(candidates, refs, metrics=("ROUGE_L", "CIDEr"))
        assert got["ROUGE_L"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
        assert got["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


@requires_java
def test_ptb_tokenize_matches_stanford_jar(e2e_test_set: tuple[list[str], list[list[str]]]) -> None:
    import pycocoevalcap.tokenizer

    jar = Path(next(iter(pycocoevalcap.tokenizer.__path__))) / "stanford-corenlp-3.4.1.jar"
    sentences = sorted({s for p, rs in zip(*e2e_test_set) for s in [p, *rs]})
    cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    lines = subprocess.run(cmd, input="\n".join(sentences).encode(), capture_output=True, check=True).stdout
    punct = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
    for sentence, line in zip(sentences, lines.decode().split("\n"), strict=False):
        assert ptb_tokenize(sentence) == " ".join(w for w in line.rstrip().split(" ") if w not in punct)


@requires_java
@pytest.mark.slow
def test_real_data_meteor(e2e_test_set: tuple[list[str], list[list[str]]]) -> None:
    got = e2e_scores(*e2e_test_set)
    assert list(got) == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert 0.3 < got["METEOR"] < 0.6
    assert got["METEOR"] == pytest.approx(MEASURED["METEOR"], abs=1e-5)
