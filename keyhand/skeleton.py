"""The 21-joint hand skeleton every part of keyhand uses (manopth order: MANO's 16 joints plus 5 fingertips).

    from keyhand.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS, BONES, WRIST, MIDDLE_MCP

Order: wrist, then per finger (thumb, index, middle, ring, little) its joints from the base to the tip
("…1" MCP / thumb CMC … "…4" tip). ``MIDDLE_MCP`` is the crop centre p_c of §3.1 and, with the wrist, the
palm length that normalises gesture inputs (§4.3.3).
"""

from __future__ import annotations

__all__ = ["JOINT_NAMES", "NUM_JOINTS", "PARENTS", "BONES", "WRIST", "MIDDLE_MCP", "FINGERS"]

#: The 21 joints, manopth order.
JOINT_NAMES = (
    "wrist",
    "thumb1", "thumb2", "thumb3", "thumb4",
    "index1", "index2", "index3", "index4",
    "middle1", "middle2", "middle3", "middle4",
    "ring1", "ring2", "ring3", "ring4",
    "little1", "little2", "little3", "little4",
)
NUM_JOINTS = len(JOINT_NAMES)
#: The five fingers in joint order.
FINGERS = ("thumb", "index", "middle", "ring", "little")
WRIST = JOINT_NAMES.index("wrist")
#: The middle finger's metacarpophalangeal joint: the §3.1 crop centre p_c.
MIDDLE_MCP = JOINT_NAMES.index("middle1")
#: Parent of each joint (wrist = -1; a finger's base joint hangs from the wrist).
PARENTS = tuple([-1] + [WRIST if (j - 1) % 4 == 0 else j - 1 for j in range(1, NUM_JOINTS)])
#: The 20 bones (parent, child).
BONES = tuple((PARENTS[j], j) for j in range(1, NUM_JOINTS))
