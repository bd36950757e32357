"""Data: corpora (built-in, bring-your-own, toy), tokenizer, packing into same-cluster sequences, DataModule."""
