"""DomainNet (Peng et al., "Moment Matching for Multi-Source Domain Adaptation", ICCV 2019):
345 classes, six domains, with the authors' train/test lists.

Files (the authors' site, http://ai.bu.edu/M3SDA/): ``<domain>.zip`` from
``http://csr.bu.edu/ftp/visda/2019/multi-source/`` (clipart and painting from its
``groundtruth/`` folder, the cleaned versions) holding ``<domain>/<class>/*.jpg``, and
``domainnet/txt/<domain>_{train,test}.txt`` (``<domain>/<class>/<file> <label>`` per
line). No checksum is published. Layout::

    domainnet/clipart/<class>/*.jpg   domainnet/clipart_train.txt   domainnet/clipart_test.txt

Splits: ``train``, ``test`` (the lists), ``all`` (both); ``val_fraction`` carves ``val``
from ``train``. Images are stored once, encoded, and decoded when read, so a 175,000-image
domain (real) does not sit in memory.
"""

from __future__ import annotations

from jtl.data.benchmarks.base import Benchmark, concat, read_list
from jtl.data.benchmarks.download import Remote

BASE = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
ZIPS = {
    "clipart": "groundtruth/clipart.zip", "infograph": "infograph.zip", "painting": "groundtruth/painting.zip",
    "quickdraw": "quickdraw.zip", "real": "real.zip", "sketch": "sketch.zip",
}
NO_CHECKSUM = "the DomainNet authors publish no checksum"

# Label order of the authors' lists (case-insensitive alphabetical folder names).
CLASSES = (
    "aircraft_carrier", "airplane", "alarm_clock", "ambulance", "angel", "animal_migration", "ant", "anvil",
    "apple", "arm", "asparagus", "axe", "backpack", "banana", "bandage", "barn", "baseball", "baseball_bat",
    "basket", "basketball", "bat", "bathtub", "beach", "bear", "beard", "bed", "bee", "belt", "bench",
    "bicycle", "binoculars", "bird", "birthday_cake", "blackberry", "blueberry", "book", "boomerang",
    "bottlecap", "bowtie", "bracelet", "brain", "bread", "bridge", "broccoli", "broom", "bucket", "bulldozer",
    "bus", "bush", "butterfly", "cactus", "cake", "calculator", "calendar", "camel", "camera", "camouflage",
    "campfire", "candle", "cannon", "canoe", "car", "carrot", "castle", "cat", "ceiling_fan", "cello",
    "cell_phone", "chair", "chandelier", "church", "circle", "clarinet", "clock", "cloud", "coffee_cup",
    "compass", "computer", "cookie", "cooler", "couch", "cow", "crab", "crayon", "crocodile", "crown",
    "cruise_ship", "cup", "diamond", "dishwasher", "diving_board", "dog", "dolphin", "donut", "door", "dragon",
    "dresser", "drill", "drums", "duck", "dumbbell", "ear", "elbow", "elephant", "envelope", "eraser", "eye",
    "eyeglasses", "face", "fan", "feather", "fence", "finger", "fire_hydrant", "fireplace", "firetruck", "fish",
    "flamingo", "flashlight", "flip_flops", "floor_lamp", "flower", "flying_saucer", "foot", "fork", "frog",
    "frying_pan", "garden", "garden_hose", "giraffe", "goatee", "golf_club", "grapes", "grass", "guitar",
    "hamburger", "hammer", "hand", "harp", "hat", "headphones", "hedgehog", "helicopter", "helmet", "hexagon",
    "hockey_puck", "hockey_stick", "horse", "hospital", "hot_air_balloon", "hot_dog", "hot_tub", "hourglass",
    "house", "house_plant", "hurricane", "ice_cream", "jacket", "jail", "kangaroo", "key", "keyboard", "knee",
    "knife", "ladder", "lantern", "laptop", "leaf", "leg", "light_bulb", "lighter", "lighthouse", "lightning",
    "line", "lion", "lipstick", "lobster", "lollipop", "mailbox", "map", "marker", "matches", "megaphone",
    "mermaid", "microphone", "microwave", "monkey", "moon", "mosquito", "motorbike", "mountain", "mouse",
    "moustache", "mouth", "mug", "mushroom", "nail", "necklace", "nose", "ocean", "octagon", "octopus", "onion",
    "oven", "owl", "paintbrush", "paint_can", "palm_tree", "panda", "pants", "paper_clip", "parachute",
    "parrot", "passport", "peanut", "pear", "peas", "pencil", "penguin", "piano", "pickup_truck",
    "picture_frame", "pig", "pillow", "pineapple", "pizza", "pliers", "police_car", "pond", "pool", "popsicle",
    "postcard", "potato", "power_outlet", "purse", "rabbit", "raccoon", "radio", "rain", "rainbow", "rake",
    "remote_control", "rhinoceros", "rifle", "river", "roller_coaster", "rollerskates", "sailboat", "sandwich",
    "saw", "saxophone", "school_bus", "scissors", "scorpion", "screwdriver", "sea_turtle", "see_saw", "shark",
    "sheep", "shoe", "shorts", "shovel", "sink", "skateboard", "skull", "skyscraper", "sleeping_bag",
    "smiley_face", "snail", "snake", "snorkel", "snowflake", "snowman", "soccer_ball", "sock", "speedboat",
    "spider", "spoon", "spreadsheet", "square", "squiggle", "squirrel", "stairs", "star", "steak", "stereo",
    "stethoscope", "stitches", "stop_sign", "stove", "strawberry", "streetlight", "string_bean", "submarine",
    "suitcase", "sun", "swan", "sweater", "swing_set", "sword", "syringe", "table", "teapot", "teddy-bear",
    "telephone", "television", "tennis_racquet", "tent", "The_Eiffel_Tower", "The_Great_Wall_of_China",
    "The_Mona_Lisa", "tiger", "toaster", "toe", "toilet", "tooth", "toothbrush", "toothpaste", "tornado",
    "tractor", "traffic_light", "train", "tree", "triangle", "trombone", "truck", "trumpet", "t-shirt",
    "umbrella", "underwear", "van", "vase", "violin", "washing_machine", "watermelon", "waterslide", "whale",
    "wheel", "windmill", "wine_bottle", "wine_glass", "wristwatch", "yoga", "zebra", "zigzag"
)


def _remotes(domain: str) -> tuple[Remote, ...]:
    lists = tuple(
        Remote(f"{BASE}domainnet/txt/{domain}_{split}.txt", f"{domain}_{split}.txt", (f"{domain}_{split}.txt",),
               note=NO_CHECKSUM)
        for split in ("train", "test")
    )
    return (Remote(BASE + ZIPS[domain], f"{domain}.zip", (domain,), note=NO_CHECKSUM), *lists)


DOMAINNET = Benchmark(
    name="domainnet",
    classes=CLASSES,
    domains={d: d for d in ZIPS},
    remotes=_remotes,
    read=lambda root, d: concat({s: read_list(root, f"{d}_{s}.txt", CLASSES) for s in ("train", "test")}),
    image_shape=None,
    splits=("train", "test", "all"),
    citation="Peng et al. 2019",
)
