"""Teacher traces: sample k traces per prompt from each teacher, verify, keep one correct trace each.

`backends` parses teacher specs and holds the in-process backends (a Python function, offline vLLM
or transformers), `endpoint` the OpenAI-compatible client, `store` the resumable sample store and
`collect` the command's whole flow: collect, verify, select, write corpora and statistics.
"""
