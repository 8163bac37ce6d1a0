#!/usr/bin/env python3
"""Write a tiny, seeded, random-weight llama GGUF for the real-engine suite.

No model can be downloaded on the project's machines, but one can be made:
the tokenizer comes from llama.cpp's vocab-only `ggml-vocab-llama-spm.gguf`
(its `tokenizer.*` keys are copied verbatim), the weights are seeded random
tensors of a 2-layer llama (n_embd 64, 4 heads, n_ff 128). The output matrix
is untied from the embeddings (tied ones made the model repeat one token),
and its rows for the control tokens (unk, bos, eos) are zero: their logit is
then 0, the median of the random logits, so with any top_k below a few
thousand the model never ends a generation by itself and mid-stream tests can
ask for as many tokens as they need.

Same arguments, same bytes: the model digest is stable across machines.
"""

import argparse

import numpy as np
import gguf

N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_FF = 128
# Long enough for generations that last seconds (the slot's n_ctx comes
# from llama-server's -c / --parallel).
N_CTX_TRAIN = 8192


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=20240607)
    args = parser.parse_args()

    reader = gguf.GGUFReader(args.vocab)
    writer = gguf.GGUFWriter(args.out, "llama")
    writer.add_name("orchqueue-tiny-llama")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    n_vocab = None
    control = []
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        main_type = field.types[0]
        value = field.contents()
        sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, main_type, sub_type=sub_type)
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(value)
        if name in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id"):
            control.append(int(value))
    assert n_vocab, "the vocab file has no tokenizer.ggml.tokens"

    rng = np.random.default_rng(args.seed)

    def rand(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # numpy shapes are GGUF dims reversed: (rows = out, cols = in).
    writer.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD, scale=1.0))
    for i in range(N_LAYER):
        s = 1.0 / np.sqrt(N_EMBD)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", rand(N_EMBD, N_EMBD, scale=s))
        writer.add_tensor(f"blk.{i}.attn_k.weight", rand(N_EMBD, N_EMBD, scale=s))
        writer.add_tensor(f"blk.{i}.attn_v.weight", rand(N_EMBD, N_EMBD, scale=s))
        writer.add_tensor(f"blk.{i}.attn_output.weight", rand(N_EMBD, N_EMBD, scale=s))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", rand(N_FF, N_EMBD, scale=s))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", rand(N_FF, N_EMBD, scale=s))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", rand(N_EMBD, N_FF, scale=1.0 / np.sqrt(N_FF)))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = rand(n_vocab, N_EMBD, scale=1.0)
    for token in control:
        if 0 <= token < n_vocab:
            output[token, :] = 0.0
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
