import pytest

from unmask.parts import (
    CLASS_PARTS,
    CLASS_SETS,
    PARTS,
    PASCAL_PART_NUMBERED,
    PASCAL_PART_TABLE,
    ClassSet,
    UnknownNameError,
    UnknownPartNameError,
    class_set_name,
    merge_pascal_part_name,
)

# The raw PASCAL-Part names of the reference (section 6), written out here independently of
# the tables in unmask/parts.py, with the part each must become (None: dropped).
L_NAMES = {
    "lbho": "hoof", "lbleg": "leg", "lblleg": "leg", "lbpa": "paw", "lbuleg": "leg", "lear": "ear",
    "lebrow": "eyebrow", "leye": "eye", "lfho": "hoof", "lfleg": "leg", "lflleg": "leg", "lfoot": "foot",
    "lfpa": "paw", "lfuleg": "leg", "lhand": "hand", "lhorn": "horn", "llarm": "arm", "lleg": "leg",
    "llleg": "leg", "luarm": "arm", "luleg": "leg", "lwing": "wing",
}  # fmt: skip
EXPECTED_MERGE = {
    **L_NAMES,
    **{"r" + name[1:]: part for name, part in L_NAMES.items()},
    "backside": "vehicle_back", "beak": "beak", "bliplate": "licenseplate", "body": "body", "bwheel": "wheel",
    "cap": "cap", "chainwheel": None, "fliplate": "licenseplate", "frontside": "frontside", "fwheel": "wheel",
    "hair": "hair", "handlebar": None, "hbackside": None, "head": "head", "hfrontside": None,
    "hleftside": None, "hrightside": None, "hroofside": None, "leftmirror": "mirror", "leftside": "vehicle_left",
    "mouth": "mouth", "muzzle": "muzzle", "neck": "neck", "nose": "nose", "plant": "plant", "pot": "pot",
    "rightmirror": "mirror", "rightside": "vehicle_right", "roofside": "vehicle_top", "saddle": "saddle",
    "screen": "screen", "stern": "stern", "tail": "tail", "torso": "torso",
    "cbackside_1": "coach_back", "cfrontside_2": "coach_front", "cleftside_3": "coach_left",
    "crightside_4": "coach_right", "croofside_5": "coach_top", "coach_1": None, "door_2": "door",
    "engine_3": "engine", "headlight_4": "headlight", "wheel_12": "wheel", "window_7": "window",
}  # fmt: skip


def test_there_are_44_distinct_parts():
    assert len(PARTS) == 44
    assert len(set(PARTS)) == 44
    assert list(PARTS) == sorted(PARTS)


def test_union_of_the_class_table_is_exactly_the_44_parts():
    assert set().union(*CLASS_PARTS.values()) == set(PARTS)


def test_class_table_matches_the_reference():
    assert len(CLASS_PARTS) == 16
    assert CLASS_PARTS["bird"] == {"beak", "eye", "foot", "head", "leg", "neck", "tail", "torso", "wing"}
    assert CLASS_PARTS["bicycle"] == {"saddle", "wheel"}
    assert CLASS_PARTS["tvmonitor"] == {"screen"}
    assert CLASS_PARTS["car"] == CLASS_PARTS["bus"]
    assert len(CLASS_PARTS["car"]) == 11
    assert len(CLASS_PARTS["person"]) == 13
    assert CLASS_PARTS["dog"] - CLASS_PARTS["cat"] == {"muzzle"}
    assert not {"boat", "chair", "diningtable", "sofa"} & set(CLASS_PARTS)


def test_class_sets_keep_the_original_order_and_aliases():
    assert CLASS_SETS["cs3-1"] == ("car", "person", "train")
    assert CLASS_SETS["cs3-2"] == ("person", "dog", "bird")
    assert CLASS_SETS["cs5-1"] == ("dog", "car", "bottle", "train", "person")
    assert CLASS_SETS["cs5-2"] == ("dog", "car", "bird", "train", "person")
    for alias, name in {"CS3a": "cs3-1", "CS3b": "cs3-2", "CS5a": "cs5-1", "cs5b": "cs5-2"}.items():
        assert class_set_name(alias) == name
        assert ClassSet.named(alias) == ClassSet(name, CLASS_SETS[name])


def test_unknown_class_set_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="cs3-1, cs3-2, cs5-1, cs5-2, CS3a"):
        class_set_name("cs9")


def test_class_set_may_be_given_as_classes():
    assert ClassSet.of(["bird", "cat"]).classes == ("bird", "cat")
    with pytest.raises(UnknownNameError, match="unicorn"):
        ClassSet.of(["bird", "unicorn"])
    with pytest.raises(ValueError, match="distinct"):
        ClassSet.of(["bird", "bird"])


def test_class_set_expected_parts_matrix_follows_the_table():
    class_set = ClassSet.named("cs3-2")
    assert class_set.expected.shape == (3, len(PARTS))
    for row, name in enumerate(class_set.classes):
        assert {PARTS[j] for j in class_set.expected[row].nonzero()[0]} == CLASS_PARTS[name]
    assert not class_set.expected.flags.writeable  # one fact, read everywhere, changed nowhere
    assert class_set.index("dog") == 1 and class_set.expected_parts("bird") == CLASS_PARTS["bird"]
    with pytest.raises(UnknownNameError, match="person, dog, bird"):
        class_set.index("car")


@pytest.mark.parametrize(("raw", "part"), sorted(EXPECTED_MERGE.items()))
def test_every_raw_pascal_part_name_merges_to_its_part(raw, part):
    assert merge_pascal_part_name(raw, "person") == part


def test_merged_parts_are_among_the_44():
    merged = {*PASCAL_PART_TABLE.values(), *PASCAL_PART_NUMBERED.values()} - {None}
    assert merged <= set(PARTS)


def test_original_merge_differs_only_by_its_two_defects():
    differences = {
        raw: merge_pascal_part_name(raw, "bicycle", mode="original")
        for raw, part in EXPECTED_MERGE.items()
        if merge_pascal_part_name(raw, "bicycle", mode="original") != part
    }
    assert differences == {"handlebar": "hand", "chainwheel": "wheel"}


def test_unknown_names_and_classes_raise():
    with pytest.raises(UnknownPartNameError, match="'fin'"):
        merge_pascal_part_name("fin", "aeroplane")
    with pytest.raises(UnknownPartNameError):
        merge_pascal_part_name("spoiler_3", "car")
    with pytest.raises(UnknownNameError, match="PASCAL VOC object class 'unicorn'"):
        merge_pascal_part_name("head", "unicorn")
    with pytest.raises(UnknownNameError, match="merge mode"):
        merge_pascal_part_name("head", "person", mode="fuzzy")


def test_merge_ignores_case_and_surrounding_space():
    assert merge_pascal_part_name(" LEar ", "dog") == "ear"
