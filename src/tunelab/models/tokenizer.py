"""Build a CLIP BPE tokenizer from a word list, so presets never download tokenizer files.

The vocabulary follows CLIP's layout: the 256 byte symbols, the same with the
end-of-word marker, one token per merge, then the two special tokens. The merges
are BPE learned on the word list, so every listed word becomes a single token
and any other text still tokenizes (down to bytes).
"""

import string

from transformers import CLIPTokenizer, T5Tokenizer

END_OF_WORD = "</w>"

# Words that tests, examples and the demo prompts use; anything else falls back to sub-words.
DEFAULT_WORDS = (
    "a an the of on in at with and photo picture rendering painting drawing sketch pencil "
    "close up shot portrait style toy dog cat man woman person face sks zwx ohwx bottle "
    "red green blue yellow white black orange purple pink gray small large big "
    "circle square triangle star cross ring background left right top bottom center "
    "masterpiece high quality detailed"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode symbols."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shift)
            shift += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges learned on the word list itself, until every word is one symbol.

    A BPE tokenizer replays merges in the order they were learned, so a word from the list
    goes through exactly the merges that built it and always comes out as one token (merges
    made word by word, instead, let one word's merge split another: "hi" from "high" in "white").
    """
    segmentations = [list(word[:-1]) + [word[-1] + END_OF_WORD] for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for pieces in segmentations:
            for pair in zip(pieces, pieces[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))  # most frequent; ties by text, for determinism
        merges.append(best)
        for index, pieces in enumerate(segmentations):
            merged, position = [], 0
            while position < len(pieces):
                if position + 1 < len(pieces) and (pieces[position], pieces[position + 1]) == best:
                    merged.append(pieces[position] + pieces[position + 1])
                    position += 2
                else:
                    merged.append(pieces[position])
                    position += 1
            segmentations[index] = merged


def build_clip_tokenizer(words=DEFAULT_WORDS, model_max_length: int = 77) -> CLIPTokenizer:
    symbols = list(_bytes_to_unicode().values())
    vocab_tokens = symbols + [s + END_OF_WORD for s in symbols]
    merges = _learn_merges(sorted(set(w.lower() for w in words)))
    seen = set(vocab_tokens)
    for left, right in merges:
        if left + right not in seen:
            vocab_tokens.append(left + right)
            seen.add(left + right)
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_t5_tokenizer(words=DEFAULT_WORDS, model_max_length: int = 64):
    """A T5-style (SentencePiece unigram) tokenizer: each word one `▁word` piece, any other text
    falls back to single characters; ids 0, 1, 2 are <pad>, </s>, <unk> as in T5."""
    characters = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, -3.0) for word in sorted(set(w.lower() for w in words))]
    # A word piece (-3) always beats spelling the word out; a lone character costs more than one after a space.
    vocab += [("\u2581" + c, -9.0) for c in characters] + [(c, -10.0) for c in characters]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
