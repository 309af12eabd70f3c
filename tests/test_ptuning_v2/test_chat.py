import subprocess
import sys

from ptuning_v2.chat import reply
from ptuning_v2.inference import load_session


class CountingStreamer:
    def __init__(self):
        self.puts = 0

    def put(self, value):
        self.puts += 1

    def end(self):
        pass


def test_reply_streams_token_by_token_and_uses_history_format(tiny_checkpoint):
    session = load_session(str(tiny_checkpoint))
    streamer = CountingStreamer()
    reply(session, "这个好不好", [], streamer, max_new_tokens=5, do_sample=False)
    assert streamer.puts >= 2  # the prompt once, then every new token
    prompt = session.tokenizer.decode(session.prompt_ids("天", [("这个好不好", "好")]), skip_special_tokens=True)
    assert prompt == "问：这个好不好\n答：好\n天\n答："  # the instruction template recorded in the checkpoint


def test_chat_cli_with_piped_stdin(tiny_checkpoint):
    stdin = "这个好不好\n天好不好\nclear\n水\nexit\nnever read\n"
    result = subprocess.run([sys.executable, "-m", "ptuning_v2.chat", "--checkpoint", str(tiny_checkpoint),
                             "--max_new_tokens", "4"], input=stdin, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.count("助手：") == 3 and "(history cleared)" in out and out.rstrip().endswith("bye")
    assert "never read" not in out


def test_chat_cli_base_only_and_bad_checkpoint(tiny_base_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ptuning_v2.chat", "--model", str(tiny_base_dir),
                             "--max_new_tokens", "3"], input="你好\n", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.count("助手：") == 1, result.stderr[-2000:]
    result = subprocess.run([sys.executable, "-m", "ptuning_v2.chat", "--checkpoint", str(tmp_path)],
                            input="", capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "prefix_config.json: not found" in result.stderr
