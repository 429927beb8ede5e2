"""Tokenizers: SentencePiece trained in-test, HF tokenizer.json parity with transformers, chat
templates rendered like transformers' apply_chat_template."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from tempo_jax.data import arithmetic
from tempo_jax.data.chat_template import ChatTemplate
from tempo_jax.data.hf_tokenizer import HFTokenizer
from tempo_jax.data.prompt import PromptConfig, PromptFormatter
from tempo_jax.data.sentencepiece_tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SentencePieceTokenizer,
    train_sentencepiece,
)
from tempo_jax.data.tokenizer import Tokenizer
from tempo_jax.data.train_tokenizer import main as train_tokenizer_main
from tempo_jax.tempo.rollout_data import decode_responses

ROUND_TRIP_TEXTS = [
    "55+19=74\n74-67=7\n\\boxed{7}",
    "What is (12+3)*4?",
    "Let $x=\\frac{1}{2}$, so \\boxed{\\dfrac{3}{4}} and \\sqrt{2}.",
    "  leading and trailing spaces  \n\n\ttab",
    "unicode: é ∑ 漢字 🙂",
    "",
]


@pytest.fixture(scope="module")
def sp_tokenizer(task_tokenizer_path):
    return SentencePieceTokenizer.from_file(task_tokenizer_path)


def test_sentencepiece_round_trips_and_splits_digits(sp_tokenizer, tmp_path):
    tok = sp_tokenizer
    assert isinstance(tok, Tokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.eos_ids) == (PAD_ID, BOS_ID, EOS_ID, (EOS_ID,))
    assert 280 < tok.vocab_size <= 320
    for text in ROUND_TRIP_TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    # Every digit is its own piece, so multi-digit numbers are spelled out.
    pieces = [tok.id_to_piece(i) for i in tok.encode("12345+678=13023")]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("12345678") + list("13023")
    # Specials are dropped by decode, unknown characters go through bytes (no <unk>).
    assert tok.decode([BOS_ID, *tok.encode("1+1=2"), EOS_ID, PAD_ID, PAD_ID]) == "1+1=2"
    assert 1 not in tok.encode("漢字 🙂")
    # Concatenation at a line start: no dummy-prefix space sneaks in.
    q, s = "What is 3+4?\n", "3+4=7\n\\boxed{7}"
    assert tok.decode(tok.encode(q) + tok.encode(s)) == q + s
    # Save / load.
    path = tmp_path / "arith.model"
    tok.save(path)
    loaded = SentencePieceTokenizer.from_file(path)
    assert loaded.encode(ROUND_TRIP_TEXTS[2]) == tok.encode(ROUND_TRIP_TEXTS[2])
    assert loaded.vocab_size == tok.vocab_size
    # The built-in task's solutions stay short with this tokenizer (measured, see arithmetic.py).
    cfg = arithmetic.ArithmeticTaskConfig()
    lengths = [
        len(tok.encode(arithmetic.problem_at(cfg, "unlabeled", i).solution)) for i in range(200)
    ]
    assert sum(lengths) / len(lengths) < 40 and max(lengths) <= 52


def test_sentencepiece_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=200 is too small"):
        train_sentencepiece(["a b c"], vocab_size=200)
    with pytest.raises(ValueError, match="corpus is empty"):
        train_sentencepiece(["", ""], vocab_size=300)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceTokenizer.from_file(bad)


def test_train_tokenizer_command(tmp_path):
    out = tmp_path / "cmd.model"
    corpus = tmp_path / "extra.txt"
    corpus.write_text("Solve carefully.\n", encoding="utf-8")
    assert (
        train_tokenizer_main(["--out", str(out), "--num_problems", "100", "--corpus", str(corpus)])
        == 0
    )
    tok = SentencePieceTokenizer.from_file(out)
    assert tok.decode(tok.encode("Solve carefully. 12+3=15")) == "Solve carefully. 12+3=15"
    # The module is runnable as documented.
    out2 = tmp_path / "cmd2.model"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tempo_jax.data.train_tokenizer",
            "--out",
            str(out2),
            "--num_problems",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vocab_size=" in proc.stdout and out2.stat().st_size > 1000


# --- HF tokenizer.json ---------------------------------------------------------------------------

CHAT_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(system='') %}
{%- for message in messages %}
  {%- if message['role'] == 'system' %}
    {%- set ns.system = message['content'] %}
  {%- endif %}
{%- endfor %}
{% if ns.system %}<|im_start|>system
{{ ns.system }}<|im_end|>
{% endif %}
{% for message in messages if message['role'] != 'system' %}
{% if message['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | trim }}{% if loop.last and meta is defined %} {{ meta | tojson }}{% endif %}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think>

</think>

{% endif %}{% endif %}"""

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]

HF_TEXTS = [
    "What is 12+7-5? Think step by step.",
    "The answer is \\boxed{\\frac{1}{2}}.\nDone.",
    "<|im_start|>user\nhello<|im_end|>",
    "  spaces   and\ttabs  ",
    "ünïcödé text ∑ 漢字",
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A Qwen-style checkpoint directory: byte-level BPE trained here, config files written here."""
    directory = tmp_path_factory.mktemp("hf_tok")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        p.question + "\n" + p.solution
        for _, p in arithmetic.iter_split(
            arithmetic.ArithmeticTaskConfig(num_labeled=300), "labeled"
        )
    ]
    corpus += ["The answer is the value. Think step by step about fractions \\frac{a}{b}."] * 20
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": {
                    "__type": "AddedToken",
                    "content": "<|im_end|>",
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                },
                "pad_token": "<|endoftext|>",
                "chat_template": CHAT_TEMPLATE,
            }
        ),
        encoding="utf-8",
    )
    (directory / "generation_config.json").write_text(
        json.dumps(
            {
                "eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],
            }
        ),
        encoding="utf-8",
    )
    return directory


@pytest.fixture(scope="module")
def hf_pair(hf_dir):
    transformers = pytest.importorskip("transformers")
    return HFTokenizer.from_directory(hf_dir), transformers.AutoTokenizer.from_pretrained(
        str(hf_dir), local_files_only=True
    )


def test_hf_tokenizer_encodes_like_transformers(hf_pair, hf_dir):
    ours, theirs = hf_pair
    assert isinstance(ours, Tokenizer)
    fast = pytest.importorskip("transformers").PreTrainedTokenizerFast(
        tokenizer_file=str(hf_dir / "tokenizer.json")
    )
    for text in HF_TEXTS:
        assert ours.encode(text) == fast.encode(text, add_special_tokens=False), text
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.decode(ours.encode(HF_TEXTS[1])) == HF_TEXTS[1]
    assert ours.vocab_size == len(theirs)
    assert ours.eos_id == theirs.eos_token_id == theirs.convert_tokens_to_ids("<|im_end|>")
    assert ours.eos_ids == (ours.eos_id, theirs.convert_tokens_to_ids("<|endoftext|>"))
    assert ours.pad_id == theirs.pad_token_id
    assert ours.bos_id == theirs.bos_token_id


def test_batch_decode_matches_row_decode_and_drops_only_a_final_eos(sp_tokenizer, hf_pair):
    """decode_batch is decode per row (HF: as transformers decodes); decode_responses cuts each
    row at its length and drops one final EOS (any of eos_ids), whatever sits past the length."""
    ours, theirs = hf_pair
    hf_rows = [ours.encode(t) for t in HF_TEXTS]
    hf_rows[1] = [ours.bos_id, *hf_rows[1], ours.eos_ids[1], ours.pad_id]
    hf_rows.append([])
    want = [theirs.decode(r, skip_special_tokens=True) for r in hf_rows]
    assert ours.decode_batch(hf_rows) == want == [ours.decode(r) for r in hf_rows]
    sp = sp_tokenizer
    sp_rows = [sp.encode(t) for t in ROUND_TRIP_TEXTS]
    sp_rows.append([BOS_ID, *sp.encode("1+1=2"), EOS_ID, PAD_ID, PAD_ID])
    assert sp.decode_batch(sp_rows) == ROUND_TRIP_TEXTS + ["1+1=2"]
    assert sp.decode_batch([]) == []
    with pytest.raises(ValueError, match=f"token id {sp.vocab_size} outside"):
        sp.decode_batch([[5], [5, sp.vocab_size]])

    for tok, eos_ids in ((sp, [EOS_ID]), (ours, list(ours.eos_ids))):
        body = tok.encode("3+4=7")
        n = len(body)
        junk = tok.encode("99")[0]
        tokens = np.full((5, n + 3), junk, np.int32)
        tokens[:, :n] = body
        tokens[0, n] = eos_ids[0]  # final EOS: dropped
        tokens[1, n] = eos_ids[-1]  # the other EOS id: dropped
        tokens[2, n - 1] = eos_ids[0]  # an EOS that is not last: kept (decode skips it)
        lengths = np.array([n + 1, n + 1, n + 1, n, 0])
        texts = decode_responses(tokens, lengths, tok, eos_ids)
        junk_text = tok.decode([junk])
        assert texts == ["3+4=7", "3+4=7", tok.decode(body[:-1]) + junk_text, "3+4=7", ""]


@pytest.mark.parametrize(
    "messages, kwargs",
    [
        ([{"role": "user", "content": "What is 2+2?"}], {}),
        (
            [
                {"role": "system", "content": "Be brief & exact <ok>."},
                {"role": "user", "content": "  ünïcödé \\boxed{1}  "},
            ],
            {},
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ],
            {"meta": {"k": "é<&>", "n": [1, 2]}},
        ),
        ([{"role": "user", "content": "no think"}], {"enable_thinking": False}),
    ],
)
def test_chat_template_matches_transformers(hf_pair, messages, kwargs):
    ours, theirs = hf_pair
    expected = theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **kwargs
    )
    got = ours.chat_template.render(
        messages, add_generation_prompt=True, special_tokens=ours.special_tokens(), **kwargs
    )
    assert got == expected
    assert got.startswith("<s>") and got.endswith(
        "<|im_start|>assistant\n"
        + ("<think>\n\n</think>\n\n" if kwargs.get("enable_thinking") is False else "")
    )
    expected_ids = theirs.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, **kwargs
    )
    if isinstance(expected_ids, dict) or hasattr(expected_ids, "keys"):
        expected_ids = expected_ids["input_ids"]
    assert ours.encode(got) == list(expected_ids)


def test_chat_prompt_formatter_and_template_errors(hf_dir, hf_pair, tmp_path):
    ours, theirs = hf_pair
    cfg = PromptConfig(
        kind="chat",
        template="Solve: {question} Put the answer in \\boxed{}.",
        system="sys",
        chat_template_kwargs={"enable_thinking": False},
    )
    fmt = PromptFormatter(ours, cfg)
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Solve: 1+1? Put the answer in \\boxed{}."},
    ]
    assert fmt.text("1+1?") == theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert fmt.encode("1+1?") == ours.encode(fmt.text("1+1?"))  # the template writes its own BOS
    with pytest.raises(ValueError, match="bad role"):
        ours.chat_template.render([{"role": "tool", "content": "x"}])
    # Templates are untrusted code: the sandbox refuses Python internals and mutation.
    for escape in ("{{ ''.__class__.__mro__ }}", "{{ messages.append(1) }}"):
        with pytest.raises(ValueError, match="unsafe"):
            ChatTemplate(escape).render([])
    with pytest.raises(ValueError, match="does not parse"):
        ChatTemplate("{% for %}")
    # chat_template.jinja wins over the config entry, as in transformers.
    import shutil

    other = tmp_path / "ckpt"
    shutil.copytree(hf_dir, other)
    (other / "chat_template.jinja").write_text("J:{{ messages[0]['content'] }}", encoding="utf-8")
    assert (
        HFTokenizer.from_directory(other).chat_template.render([{"role": "user", "content": "q"}])
        == "J:q"
    )
    (other / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="no tokenizer.json"):
        HFTokenizer.from_directory(other)


def test_plain_prompt_formatter(sp_tokenizer):
    fmt = PromptFormatter(sp_tokenizer, PromptConfig(template="Q: {question}\nA: \\boxed{}"))
    assert fmt.text("1+{2}?") == "Q: 1+{2}?\nA: \\boxed{}"
    ids = fmt.encode("1+2?")
    assert ids[0] == BOS_ID and sp_tokenizer.decode(ids[1:]) == "Q: 1+2?\nA: \\boxed{}"
    no_bos = PromptFormatter(sp_tokenizer, PromptConfig(add_bos=False)).encode("1+2?")
    assert no_bos == sp_tokenizer.encode("1+2?\n")
    with pytest.raises(ValueError, match="no chat template"):
        PromptFormatter(sp_tokenizer, PromptConfig(kind="chat"))
    with pytest.raises(ValueError, match="must contain"):
        PromptConfig(template="no placeholder")
    with pytest.raises(ValueError, match="kind"):
        PromptConfig(kind="xml")
    # A chat template given in config works with any tokenizer.
    chat = PromptFormatter(
        sp_tokenizer,
        PromptConfig(
            kind="chat",
            chat_template="{{ eos_token }}U:{{ messages[-1]['content'] }}"
            "{% if add_generation_prompt %}\nA:{% endif %}",
        ),
    )
    # trim_blocks eats the newline right after the if-tag, as HF templates expect.
    assert chat.text("7?") == "</s>U:7?\nA:"
