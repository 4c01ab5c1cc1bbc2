"""The five E2E NLG Challenge scores, computed as the official ``measure_scores.py`` (tuetschek/e2e-metrics) does.

The official script scores a whole corpus at once: each prediction against all references of its MR.

* **BLEU, NIST** -- its default path runs ``mteval-v13a-sig.pl`` (NIST MT-Eval v13a, case-insensitive, default
  tokenisation, BLEU with smoothing and the *closest* reference length, NIST over 5-grams). Reproduced here:
  the v13a tokenisation regexes (ASCII-only lower-casing, punctuation split, ``.``/``,`` kept between digits,
  whitespace collapsed as the SGML reader does); corpus-level sums of clipped n-gram matches; the closest
  reference length per segment, ties to the shorter one, references of length 0 skipped except the first; NIST
  information weights ``-log2(count(w1..wn) / count(w1..wn-1))`` from all references of the corpus (with Perl's
  quirk that a prefix which is the single token ``0`` is false, so such an n-gram is weighted against the total
  number of reference words); the NIST length penalty with the *average reference length taken as total
  reference words / the mean number of non-empty references per segment*. The script pads every MR with empty
  references up to the largest number of references of any MR; its mteval (the ``-sig`` variant) counts, per
  segment, only the references that are not empty after tokenisation, and ``score_system`` divides the
  corpus's reference words by ``cum_ref_count / cum_seg_count``. (Dividing by the padded count instead gives a
  shorter average length and so a far milder penalty for outputs much shorter than their references.)
* **METEOR** -- METEOR 1.5 (``java -jar meteor-1.5.jar - - -stdio -l en -norm``) through pycocoevalcap's wrapper,
  corpus-level statistics aggregated by the jar; needs Java and ``pycocoevalcap``.
* **ROUGE_L, CIDEr** -- pycocoevalcap's ``Rouge`` (sentence LCS F-measure, beta=1.2, best precision and best
  recall over the references, averaged over segments) and ``Cider`` (the coco-caption scorer the script uses:
  tf-idf with document frequencies from the test references, 1-4-grams, clipping, Gaussian length penalty with
  sigma=6 where "length" is, as in that code, the number of *bigrams*, times 10). Re-implemented in Python so
  they need neither Java nor pycocoevalcap; the tests check them against pycocoevalcap when it is installed.

METEOR, ROUGE_L and CIDEr see the text after coco-caption's tokeniser: Stanford CoreNLP 3.4.1 ``PTBTokenizer
-preserveLines -lowerCase`` (a Java program) followed by removal of the punctuation tokens ``'' ' `` ` . ? ! , :
- -- ... ;`` and ``-LRB-``-style tokens (upper-case only, so lower-cased brackets such as ``-lrb-`` stay).

Why BLEU/NIST are hand-written: sacrebleu (13a, lowercase, exp smoothing) gives the same BLEU on the E2E test
set but not mteval's on hypotheses under 4 words, non-ASCII capitals or an empty first reference; nltk's
``corpus_nist`` scores each segment against its single best reference (7.85 instead of mteval's 8.90 there).

Deviations:

* The PTB tokeniser is re-implemented by regexes (:func:`ptb_tokenize`), so no Java is needed for ROUGE_L and
  CIDEr. It gives the same tokens as the jar on every reference of the E2E dev and test sets (9,031 distinct
  sentences) and on common English (clitics ``n't 's 're``, ``£`` -> ``#``, brackets, abbreviations, numbers),
  but not on every corner of the Stanford lexer (e.g. URLs, ``10:30pm``). METEOR gets the same tokens.
* The script parses BLEU and NIST from mteval's printout, rounded to 4 decimals; here they are not rounded.
* Text goes into mteval's SGML unescaped in the script; here it is taken literally (no SGML parsing), which is the
  same except for text holding SGML markup such as ``</seg>``.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

__all__ = ["ALL_METRICS", "E2EMetric", "e2e_scores", "mteval_tokenize", "ptb_tokenize"]

ALL_METRICS: tuple[str, ...] = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
_INSTALL_HINT = 'pip install "kasa-lightning[e2e]" and a Java runtime (e.g. apt-get install default-jre-headless)'

# ---------------------------------------------------------------------------------------------- MT-Eval v13a
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_MTEVAL_RULES = [  # the language-dependent part of mteval-v13a's ``tokenization``
    (re.compile(r"([{-~\[-` -&(-+:-@/])"), r" \1 "),  # ASCII punctuation and symbols except ' - . ,
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),  # period and comma unless preceded by a digit
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),  # period and comma unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]


def mteval_tokenize(text: str) -> list[str]:
    """Tokens as mteval-v13a (default options: lower-cased, non-international tokenisation) produces them."""
    text = re.sub(r"\s+", " ", text).replace("<skipped>", "")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(entity, char)
    text = f" {text} ".translate(_ASCII_LOWER)  # Perl's tr/[A-Z]/[a-z]/ only touches ASCII
    for pattern, repl in _MTEVAL_RULES:
        text = pattern.sub(repl, text)
    return text.split()


def _ngrams(words: Sequence[str], max_n: int) -> Counter:
    """Counts of all 1..max_n-grams (as tuples) of ``words``."""
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        counts.update(zip(*(words[i:] for i in range(n))))
    return counts


def _nist_length_penalty(ratio: float) -> float:
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    beta = -math.log(0.5) / math.log(1.5) / math.log(1.5)
    return math.exp(-beta * math.log(ratio) * math.log(ratio))


def _mteval_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus-level BLEU (4-grams, smoothed) and NIST (5-grams) as ``mteval-v13a-sig.pl`` computes them."""
    hyps = [mteval_tokenize(p) for p in predictions]
    refs = [[mteval_tokenize(r) for r in rs] for rs in references]
    # mteval-v13a-sig's reference count for the NIST length penalty: the mean number of references per segment
    # that are not empty after tokenisation (the script's padding references are empty and not counted)
    mean_refs = sum(sum(1 for r in rs if r) for rs in refs) / len(refs)

    ref_grams = [[_ngrams(r, 5) for r in rs] for rs in refs]
    ref_ngram_counts: Counter = Counter()  # NIST information weights come from all references
    for grams in ref_grams:
        for g in grams:
            ref_ngram_counts.update(g)
    ref_words = sum(len(r) for rs in refs for r in rs)

    def info(ngram: tuple[str, ...]) -> float:
        # mteval tests the prefix string for truth: "" (a unigram) and "0" (Perl's false string) use all words
        parent = ref_ngram_counts[ngram[:-1]] if ngram[:-1] not in ((), ("0",)) else ref_words
        return -math.log(ref_ngram_counts[ngram] / parent) / math.log(2)

    match, tst_cnt, tst_info = [0] * 6, [0] * 6, [0.0] * 6  # index n = n-gram order
    ref_length = 0
    for hyp, rs, grams in zip(hyps, refs, ref_grams):
        max_ref: Counter = Counter()
        for g in grams:
            max_ref |= g  # Counter union = element-wise max
        closest = len(rs[0])
        for r in rs[1:]:  # mteval's brevity_penalty_closest: ties go to the shorter, empty references are skipped
            if r and (abs(len(hyp) - len(r)), len(r)) < (abs(len(hyp) - closest), closest):
                closest = len(r)
        ref_length += closest
        for n in range(1, 6):
            tst_cnt[n] += max(len(hyp) - n + 1, 0)
        for ngram, count in _ngrams(hyp, 5).items():
            clipped = min(count, max_ref[ngram])
            if clipped:
                match[len(ngram)] += clipped
                tst_info[len(ngram)] += info(ngram) * clipped

    # BLEU: mteval's bleu_score (smoothing 1/2^k for an order with no match, order skipped if no test n-grams)
    log_prec, smooth = 0.0, 1
    for n in range(1, 5):
        if tst_cnt[n] == 0:
            continue
        if match[n] == 0:
            smooth *= 2
            log_prec += math.log(1 / (smooth * tst_cnt[n]))
        else:
            log_prec += math.log(match[n] / tst_cnt[n])
    brevity = math.exp(min(0.0, 1 - ref_length / tst_cnt[1])) if tst_cnt[1] > 0 else 0.0
    bleu = math.exp(log_prec / 4) * brevity

    # NIST: sum over orders of information per test n-gram, times the length penalty
    nist = sum(tst_info[n] / max(tst_cnt[n], 1) for n in range(1, 6))
    nist = nist * _nist_length_penalty(tst_cnt[1] / (ref_words / mean_refs)) if ref_words else 0.0
    return {"BLEU": bleu, "NIST": nist}


# ------------------------------------------------------------------------------------- coco-caption (PTB text)
_PTB_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_PTB_MAP = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
            "£": "#", "€": "$", '"': "''", "–": "--", "—": "--"}  # fmt: skip
_PTB_ABBREV = "mr|mrs|ms|dr|st|jr|sr|prof|etc|vs|co|ltd|inc|corp|ave|rd|mt"
_PTB_CLITIC = re.compile(r"(?<=[^\W_])(n't|'s|'re|'ve|'ll|'d|'m)\b", re.IGNORECASE)
_PTB_SPLIT = re.compile(r"\b(can)(not)\b|\b(gon|wan|got)(na|ta)\b", re.IGNORECASE)
_PTB_TOKEN = re.compile(
    rf"""n't\b | '(?:s|re|ve|ll|d|m)\b | '\d\ds\b       # clitics split off before, '90s
    | \.\.\. | --                                         # ellipsis, double dash
    | (?:[^\W\d_]\.){{2,}}                                # initialisms: u.s. e.g. a.m.
    | \b(?:{_PTB_ABBREV})\.(?!\w)                         # common abbreviations keep their period
    | \b[^\W\d_]\.(?!\w)(?!\s+(?-i:[A-Z]))                # single letter + period, unless a sentence follows
    | (?:-(?=\d))?\w+(?:(?:[-'&/.]|(?<=\d)[,:](?=\d))\w+)*(?:\.(?=[,;:]))?  # words, numbers, 20-25, 3.5
    | \S""",
    re.VERBOSE | re.IGNORECASE,
)


def ptb_tokenize(text: str) -> str:
    """coco-caption's text normalisation: PTB tokens (lower-cased), punctuation tokens removed, space-joined."""
    text = _PTB_CLITIC.sub(r" \1", text)
    text = _PTB_SPLIT.sub(lambda m: " ".join(g for g in m.groups() if g), text)
    tokens = (_PTB_MAP.get(t, t).lower() for t in _PTB_TOKEN.findall(text))
    return " ".join(t for t in tokens if t not in _PTB_PUNCT)  # the jar's brackets come out as -lrb-: kept


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix): bit j of ``v`` is 0 where the LCS
    of the prefix of ``a`` read so far and ``b[: j + 1]`` grows, so the zero bits count the LCS."""
    masks: dict[str, int] = {}
    for j, y in enumerate(b):
        masks[y] = masks.get(y, 0) | (1 << j)
    full = v = (1 << len(b)) - 1
    for x in a:
        u = v & masks.get(x, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def _rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """pycocoevalcap ``Rouge``: F(best precision, best recall) per segment, averaged. Splits on " " as it does."""
    scores = []
    for cand, refs in zip(candidates, references):
        c = cand.split(" ")
        lcs = [_lcs_length(r.split(" "), c) for r in refs]
        prec = max(x / len(c) for x in lcs)
        rec = max(x / len(r.split(" ")) for x, r in zip(lcs, refs))
        scores.append((1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0)
    return sum(scores) / len(scores)


def _cider(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0) -> float:
    """pycocoevalcap ``Cider`` (CIDEr-D style: clipped tf-idf cosine, Gaussian length penalty, x10)."""
    crefs = [[_ngrams(r.split(), n) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in crefs:
        df.update({g for r in rs for g in r})
    log_n = math.log(float(len(crefs)))
    idf = {g: log_n - math.log(max(1.0, count)) for g, count in df.items()}  # n-grams in no reference: log_n

    def vectorize(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm, length = [0.0] * n, 0
        for g, tf in counts.items():
            k = len(g) - 1
            vec[k][g] = w = float(tf) * idf.get(g, log_n)
            norm[k] += w**2
            if k == 1:  # sic: pycocoevalcap's "length" counts bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for cand, rs in zip(candidates, crefs):
        vec, norm, length = vectorize(_ngrams(cand.split(), n))
        total = [0.0] * n
        for r in rs:
            rvec, rnorm, rlength = vectorize(r)
            penalty = math.e ** (-((length - rlength) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, rvec[k].get(g, 0.0)) * rvec[k].get(g, 0.0) for g, w in vec[k].items())
                if norm[k] != 0 and rnorm[k] != 0:
                    val /= norm[k] * rnorm[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(rs) * 10.0)
    return sum(scores) / len(scores)


_METEOR: list[Any] = []  # one cached pycocoevalcap Meteor (a Java process; ~15 s to start)


def _meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR 1.5 through pycocoevalcap's wrapper of ``meteor-1.5.jar`` (needs Java)."""
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError as err:
        raise ImportError(f"METEOR needs pycocoevalcap and Java: {_INSTALL_HINT}") from err
    if shutil.which("java") is None:
        raise RuntimeError(f"METEOR needs a Java runtime on PATH (`java` not found): {_INSTALL_HINT}")
    if not _METEOR or _METEOR[0].meteor_p.poll() is not None:  # start, or restart a process that died
        _METEOR[:] = [Meteor()]
    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [cand] for i, cand in enumerate(candidates)}
    try:
        score, _ = _METEOR[0].compute_score(gts, res)
    except (ValueError, BrokenPipeError) as err:
        _METEOR.clear()
        raise RuntimeError(f"the METEOR jar failed (Java too old or not enough memory for -Xmx2G?): {err}") from err
    return float(score)


# ------------------------------------------------------------------------------------------------------ API
def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not metrics or any(m not in ALL_METRICS for m in metrics):
        raise ValueError(f"metrics must be a non-empty subset of {ALL_METRICS}, got {metrics}")
    return metrics


def _check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(predictions, str) or not all(isinstance(p, str) for p in predictions):
        raise TypeError("predictions must be a list of strings")
    if isinstance(references, str) or any(isinstance(r, str) for r in references):
        raise TypeError("references must be a list of lists of strings (all references of each prediction)")
    if not all(isinstance(r, str) for refs in references for r in refs):
        raise TypeError("references must be a list of lists of strings")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every prediction needs at least one reference")


def e2e_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]], metrics: Sequence[str] = ALL_METRICS
) -> dict[str, float]:
    """Corpus-level E2E scores of ``predictions[i]`` against all of ``references[i]``.

    Returns ``{"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}`` (those in ``metrics``, in that order) as the
    official script prints them: BLEU, METEOR and ROUGE_L as fractions in [0, 1], NIST and CIDEr on their own
    scales. METEOR needs Java and pycocoevalcap; ``metrics=("BLEU", "NIST", "ROUGE_L", "CIDEr")`` needs neither.
    """
    metrics = _check_metrics(metrics)
    _check_inputs(predictions, references)
    if not predictions:
        raise ValueError("cannot score an empty corpus")
    scores: dict[str, float] = {}
    if "BLEU" in metrics or "NIST" in metrics:
        scores.update(_mteval_scores(predictions, references))
    if any(m in metrics for m in ("METEOR", "ROUGE_L", "CIDEr")):
        cands = [ptb_tokenize(p) for p in predictions]
        refs = [[ptb_tokenize(r) for r in rs] for rs in references]
        if "METEOR" in metrics:
            scores["METEOR"] = _meteor(cands, refs)
        if "ROUGE_L" in metrics:
            scores["ROUGE_L"] = _rouge_l(cands, refs)
        if "CIDEr" in metrics:
            scores["CIDEr"] = _cider(cands, refs)
    return {m: float(scores[m]) for m in ALL_METRICS if m in metrics}


class E2EMetric(Metric):
    """torchmetrics wrapper: ``update(predictions, targets)`` collects strings, ``compute()`` runs :func:`e2e_scores`.

    The scores are corpus-level (not a mean of batch scores), so the strings are kept until ``compute()``. In
    distributed runs the ranks' strings are gathered with ``torch.distributed.all_gather_object`` (torchmetrics'
    own sync only gathers tensors); samples that a distributed sampler duplicated to even out ranks are scored
    twice. ``forward`` (``metric(preds, targets)``) also scores the batch alone, a full scoring per batch (the
    METEOR Java process is reused): call ``update`` in loops and ``compute`` once.
    """

    predictions: list[str]  # states (add_state), one entry per example; gathered as strings
    targets: list[list[str]]

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, metrics: Sequence[str] = ALL_METRICS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = _check_metrics(metrics)
        self.add_state("predictions", default=[], dist_reduce_fx=None)
        self.add_state("targets", default=[], dist_reduce_fx=None)

    def update(self, predictions: Sequence[str], targets: Sequence[Sequence[str]]) -> None:
        """Add a batch: ``predictions[i]`` is scored against all strings of ``targets[i]``."""
        _check_inputs(predictions, targets)
        self.predictions.extend(predictions)
        self.targets.extend(list(t) for t in targets)

    def compute(self) -> dict[str, float]:
        """The corpus-level scores of everything added since the last ``reset()``."""
        return e2e_scores(self.predictions, self.targets, metrics=self.metrics)

    def _apply(self, fn: Any, exclude_state: Sequence[str] = ()) -> torch.nn.Module:
        # the states hold strings: ``.to(device)`` etc. must not touch them
        return super()._apply(fn, exclude_state=(*exclude_state, "predictions", "targets"))

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        """Concatenate every rank's strings, in rank order (torchmetrics calls this before ``compute``)."""
        group = process_group or self.process_group
        gathered: list[Any] = [None] * torch.distributed.get_world_size(group)
        torch.distributed.all_gather_object(gathered, (self.predictions, self.targets), group=group)
        self.predictions = [p for preds, _ in gathered for p in preds]
        self.targets = [t for _, targets in gathered for t in targets]
