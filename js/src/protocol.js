// Written by `python -m tests.test_protocol` from patchwidget/ui/protocol.py: the protocol this front end
// speaks. The bundle carries it, so `patchwidget doctor` can tell a bundle built for another protocol.
export const PROTOCOL = "52995bc2f9a5";
