"""Teacher traces: sample k traces per prompt from each teacher, verify, keep one correct trace each.

`specs` parses the teacher options (each teacher's backend is built by `t3s.backends`), `endpoint`
is the OpenAI-compatible client, and `collect` the command's whole flow: collect into the resumable
sample store, verify, select, write corpora and statistics.
"""
