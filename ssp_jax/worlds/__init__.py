"""Ready-made training worlds: the micro world and the wiki rehearsal, each prepared once into the
workdir as an answer list plus a built index. Only the entry points import this package; a run on
real data (`data.source="files"`) never touches it."""
