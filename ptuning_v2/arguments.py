"""Command-line arguments: the project's dataclasses plus HF ``Seq2SeqTrainingArguments``.

Flag names follow ChatGLM-6B's ptuning ``main.py`` (``--model_name_or_path --train_file --validation_file
--test_file --prompt_column --response_column --history_column --max_source_length --max_target_length
--pre_seq_len --prefix_projection --quantization_bit --ptuning_checkpoint``) so its scripts carry over.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Local directory (or hub id, if cached) of the base causal LM."})
    ptuning_checkpoint: str | None = field(
        default=None, metadata={"help": "A prefix checkpoint to start from; its shape flags are read from it."}
    )
    torch_dtype: str = field(
        default="auto", metadata={"help": "Base dtype: auto (bf16/fp16 on CUDA, fp32 on CPU), float32, bfloat16, float16."}
    )
    quantization_bit: int | None = field(default=None, metadata={"help": "Load the frozen base in 8 or 4 bit (bitsandbytes)."})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 or fp4."})
    double_quant: bool = field(default=False, metadata={"help": "4-bit: also quantize the quantization constants."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model directory."})


@dataclass
class PrefixArguments:
    method: str = field(default="ptuning_v2", metadata={
        "help": "What is trained (recorded in the checkpoint): ptuning_v2 (a key/value prefix at every layer; "
                "with --prefix_projection: prefix-tuning), prompt_tuning (a soft prompt at the input only), "
                "ptuning_v1 (pseudo tokens through an LSTM/MLP prompt encoder, at the input)."})
    pre_seq_len: int = field(default=128, metadata={
        "help": "Number of virtual tokens: the prefix length per layer (ptuning_v2), the soft prompt's length "
                "(prompt_tuning, ptuning_v1)."})
    prefix_projection: bool = field(
        default=False, metadata={"help": "ptuning_v2: reparameterize the prefix with an Embedding -> Linear -> Tanh -> "
                                         "Linear MLP (prefix-tuning)."}
    )
    prefix_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden width of the projection MLP (default: the model's hidden size)."}
    )
    # ChatGLM2/3 apply Dropout(0.1) to the prefix key/values; the same default here.
    prefix_dropout: float = field(default=0.1, metadata={"help": "Dropout on the prefix key/values while training."})
    prefix_init_text: str | None = field(
        default=None,
        metadata={"help": "Start the prefix from the base model's own per-layer keys/values of this text (repeated or "
                          "cut to pre_seq_len tokens) instead of at random; e.g. the task instruction. With "
                          "--prefix_projection the MLP's output layer is solved so it emits the same prefix."},
    )
    prompt_init: str = field(default="random", metadata={
        "help": "prompt_tuning: start the soft prompt at random (the embedding table's scale), from the embeddings "
                "of sampled vocabulary (vocab, seeded by --seed) or of --prompt_init_text (text)."})
    prompt_init_text: str | None = field(default=None, metadata={
        "help": "prompt_tuning with --prompt_init text: the text whose token embeddings (repeated or cut to "
                "pre_seq_len) start the soft prompt; e.g. the task instruction."})
    prompt_encoder_type: str = field(default="lstm", metadata={
        "help": "ptuning_v1: lstm (a 2-layer BiLSTM then an MLP, as in the paper) or mlp (the MLP alone)."})
    prompt_encoder_hidden_size: int | None = field(default=None, metadata={
        "help": "ptuning_v1: hidden width of the prompt encoder's MLP (default: the model's hidden size)."})
    max_nonfinite_steps: int = field(
        default=3,
        metadata={"help": "An optimizer step whose loss or gradient is NaN/inf is skipped and logged; this many in a "
                          "row stop the run with a message (0: never stop). Causes: too high a --learning_rate, "
                          "fp16 overflow (use bf16 or fp32)."},
    )
    full_finetune: bool = field(
        default=False,
        metadata={"help": "Baseline for comparison (ChatGLM's ds_train_finetune.sh): train every weight of the base "
                          "instead of a prefix and save it with save_pretrained. The prefix flags are ignored; "
                          "--quantization_bit and --ptuning_checkpoint are refused. With --torch_dtype auto the "
                          "weights load in fp32 (use --bf16/--fp16 for mixed precision)."},
    )


@dataclass
class DataArguments:
    train_file: str | None = field(default=None, metadata={"help": "Training data, JSON lines."})
    validation_file: str | None = field(default=None, metadata={
        "help": "Validation data, JSON lines: evaluated every --eval_steps (default: --save_steps), and the best "
                "checkpoint (label-scoring accuracy for classification, loss otherwise) becomes the final prefix."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, JSON lines (used by evaluate)."})
    prompt_column: str = field(default="content", metadata={"help": "Field holding the question / input text."})
    response_column: str = field(default="summary", metadata={"help": "Field holding the answer / label word."})
    history_column: str | None = field(default=None, metadata={"help": "Field holding [[query, response], ...]."})
    input_column: str | None = field(default=None, metadata={"help": "Optional field appended to the prompt (Alpaca 'input')."})
    prompt_template: str = field(default="chatglm", metadata={
        "help": "How turns are formatted: chatglm, instruction, question_last (the text, then --source_prefix as the question), plain, or chat (the tokenizer's own chat template)."})
    source_prefix: str = field(default="", metadata={"help": "Text put before every prompt (an instruction); with --prompt_template question_last, after it."})
    max_source_length: int = field(default=1024, metadata={"help": "Max prompt tokens (longer prompts keep their end)."})
    max_target_length: int = field(default=128, metadata={"help": "Max answer tokens (longer answers keep their start)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation examples."})
    label_words: str | None = field(
        default=None,
        metadata={"help": "Comma-separated answers of a classification task (e.g. 积极,消极): validation is scored "
                          "as accuracy by comparing their log-likelihoods. Default: detected from the validation "
                          "answers (at most 8 distinct short ones)."},
    )
    plot_loss: bool = field(default=True, metadata={"help": "Write loss_curve.png into the output directory."})
