"""Built-in serializer plugin: cloudpickle, imported only when a value is actually written or
read, so that a no-op build never pays for the import."""

from __future__ import annotations

from typing import Any

from cpbuild.hookspecs import hookimpl


class CloudpickleSerializer:
    name = "cloudpickle"

    def dumps(self, value: Any) -> bytes:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=5)

    def loads(self, data: bytes) -> Any:
        import pickle

        return pickle.loads(data)


@hookimpl(trylast=True)
def cpbuild_make_serializer(config: Any) -> CloudpickleSerializer:
    return CloudpickleSerializer()
