"""A user's own task and model, as a researcher would write them for a grokscale study
(trainers/spec.py: the protocol): `support.usercode.tasks:Copying`, `support.usercode.models:TinyGRU`.
broken.py and explodes.py hold classes that break the protocol, one way each, for the tests."""
