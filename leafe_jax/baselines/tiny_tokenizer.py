"""A small byte-level BPE tokenizer trained on a corpus, saved as a real HF tokenizer directory.

Used by configs that train a model from scratch (the CPU demo): the directory loads with
`transformers.AutoTokenizer.from_pretrained`, has a ChatML chat template, and round-trips text exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

PAD, BOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, as Qwen2.5 uses it; prefix-stable, which policy/chat.py relies on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int, out_dir: str, model_max_length: int) -> None:
  """Trains byte-level BPE on `corpus` and saves a PreTrainedTokenizerFast with a chat template to `out_dir`."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=[PAD, BOS, IM_START, IM_END],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tokenizer.train_from_iterator(corpus, trainer=trainer)
  wrapped = PreTrainedTokenizerFast(
      tokenizer_object=tokenizer,
      bos_token=BOS,
      eos_token=IM_END,
      pad_token=PAD,
      model_max_length=model_max_length,
  )
  wrapped.chat_template = CHAT_TEMPLATE
  wrapped.save_pretrained(out_dir)
