"""The table's stream, as the launch function receives it: which records ask for capacity. The stream
carries the table's keys, so reading them is the store's business."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from annex.store._table import annex_id_of
from annex.store.records import InstanceKey


class LaunchTrigger(BaseModel):
    """The stream record that asks for capacity: an annex META item inserted in state `requested`.
    The template's FilterCriteria let only these through; the handler checks again."""

    model_config = ConfigDict(defer_build=True)

    event_name: Literal["INSERT"]
    pk: str = Field(pattern=r"^ANNEX#ax-[0-9a-f]{16}$")
    sk: Literal["META"]
    state: Literal["requested"]

    @property
    def annex_id(self) -> str:
        return annex_id_of(self.pk)

    @classmethod
    def parse(
        cls, event_name: object, keys: dict[str, object], new_image: dict[str, object]
    ) -> LaunchTrigger | None:
        try:
            return cls.model_validate(
                {
                    "event_name": event_name,
                    "pk": keys.get("pk"),
                    "sk": keys.get("sk"),
                    "state": new_image.get("state"),
                }
            )
        except ValidationError:
            return None


class ReplaceTrigger(BaseModel):
    """The stream record that asks for a replacement: an instance record that EC2's reclaim of a spot
    instance just ended (live before, `terminated` with reason `spot-interrupted` now; or `silent` after an
    interruption warning, when the reclaim event was lost and idle-reap ended it). There is one such change
    per interrupted instance; the stream retries it until the launch function has settled it."""

    model_config = ConfigDict(defer_build=True)

    event_name: Literal["MODIFY"]
    pk: str = Field(pattern=r"^ANNEX#ax-[0-9a-f]{16}$")
    sk: str = Field(pattern=r"^INST#i-[0-9a-f]{8,17}$")
    state: Literal["terminated"]
    end_reason: Literal["spot-interrupted", "silent"]
    spot_notice: str | None = None
    old_state: Literal["pending", "running", "terminating"]

    @model_validator(mode="after")
    def _interrupted(self) -> ReplaceTrigger:
        # Silent counts only after an interruption warning: the reclaim event was lost, idle-reap ended it.
        if self.end_reason == "silent" and self.spot_notice != "interruption":
            raise ValueError("a silent end without an interruption warning is no interruption")
        return self

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(annex_id_of(self.pk), self.sk.removeprefix("INST#"))

    @classmethod
    def parse(
        cls,
        event_name: object,
        keys: dict[str, object],
        new_image: dict[str, object],
        old_image: dict[str, object],
    ) -> ReplaceTrigger | None:
        try:
            return cls.model_validate(
                {
                    "event_name": event_name,
                    "pk": keys.get("pk"),
                    "sk": keys.get("sk"),
                    "state": new_image.get("state"),
                    "end_reason": new_image.get("end_reason"),
                    "spot_notice": new_image.get("spot_notice"),
                    "old_state": old_image.get("state"),
                }
            )
        except ValidationError:
            return None
