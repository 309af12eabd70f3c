"""Chat with the base model and a prefix, streaming the answer token by token.

    python -m ptuning_v2.chat --checkpoint output/idiom        # base + prefix, prompts formatted as in training
    python -m ptuning_v2.chat --model data/base_model          # the base alone

Type a message and press Enter. ``clear`` forgets the conversation, ``exit`` (or end of input) leaves.
Works in a terminal and with piped stdin (one message per line).
"""

from __future__ import annotations

import argparse
import sys

from transformers import TextStreamer

from ptuning_v2.cli import run
from ptuning_v2.inference import InferenceSession, left_pad, load_session

WELCOME = "P-tuning v2 chat. Type a message; 'clear' resets the history, 'exit' leaves."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Chat with a base model and a P-tuning v2 prefix.")
    p.add_argument("--checkpoint", help="prefix checkpoint directory")
    p.add_argument("--model", help="base model path (default: the one recorded in the checkpoint)")
    p.add_argument("--quantization_bit", type=int, choices=[4, 8], help="override the recorded quantization")
    p.add_argument("--prompt_template", help="without a checkpoint: chatglm (default), instruction, question_last, plain or chat "
                                             "(the tokenizer's chat template)")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--do_sample", action="store_true", help="sample (default: greedy)")
    p.add_argument("--temperature", type=float, default=0.95)
    p.add_argument("--top_p", type=float, default=0.7)
    return p.parse_args(argv)


def reply(session: InferenceSession, query: str, history: list, streamer, **gen_kwargs) -> str:
    ids, mask = left_pad([session.prompt_ids(query, history)], session.tokenizer.pad_token_id, session.device)
    out = session.generate(ids, mask, streamer=streamer, **gen_kwargs)
    return session.answer(out[0, ids.shape[1]:].tolist())


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.checkpoint and not args.model:
        raise SystemExit("error: give --checkpoint or --model")
    quant = "recorded" if args.quantization_bit is None else args.quantization_bit
    session = load_session(args.checkpoint, args.model, quantization_bit=quant, prompt_template=args.prompt_template)
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample)
    if args.do_sample:
        gen_kwargs.update(temperature=args.temperature, top_p=args.top_p)
    streamer = TextStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True)
    interactive = sys.stdin.isatty()
    print(WELCOME, flush=True)
    history: list[tuple[str, str]] = []
    while True:
        try:
            query = input("\n用户：" if interactive else "")
        except EOFError:
            break
        query = query.strip()
        if not query:
            continue
        if query == "exit":
            break
        if query == "clear":
            history = []
            print("(history cleared)", flush=True)
            continue
        if not interactive:
            print(f"\n用户：{query}")
        print("助手：", end="", flush=True)
        answer = reply(session, query, history, streamer, **gen_kwargs)
        history.append((query, answer))
    print("bye", flush=True)


if __name__ == "__main__":
    run(main)
