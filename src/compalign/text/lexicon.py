"""The segmenter's built-in lexicon: closed word classes plus the open-class words COCO captions use most.

Anything not listed here is read as a noun: caption vocabulary is mostly nouns, while determiners,
prepositions, numbers, pronouns and auxiliaries are closed lists, and the adjectives and verbs that
matter are few enough to list. Word lists were drawn up from the SugarCrepe captions (COCO val2017)
and common English; a word missing from them degrades one segment, it does not break the parse.
"""

from __future__ import annotations


def _words(s: str) -> frozenset[str]:
    return frozenset(s.split())


DETERMINERS = _words("a an the this these those that some any each every all both another other its his her their "
                     "my your our no either neither such what which whose")
# Counts are attributes ("two dogs"): SugarCrepe's swap/replace/add edits change counts as they change colours.
NUMBERS = _words("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen twenty "
                 "dozen dozens hundred hundreds several many multiple numerous few various couple lots")
# "a group of people": the quantity word and "of" become part of the attribute phrase of "people".
QUANTITIES = _words("group groups couple pair pairs bunch bunches herd herds flock flocks lot lots number variety crowd "
                    "team teams line lines row rows pile piles stack stacks set sets bundle cluster collection "
                    "assortment selection array handful dozen dozens fleet pack family kind kinds type types series "
                    "trio swarm batch bouquet bevy pod litter")  # "a plate of food" stays a relation: plates are seen
PREPOSITIONS = _words("on in at with by near of under over above below behind beside besides between among amongst "
                      "across through into onto upon from to toward towards against along around inside outside "
                      "beneath underneath atop past down up off out during after before without within via like "
                      "alongside throughout nearby about beyond amid for except than including")
# Prepositions that are also verb particles ("looking up at", "lying down"), told apart by what follows.
PARTICLES = _words("up down out off over around away back along through about in on")
ADVERBS = _words("very together nearby also just still almost well really quite too so outside inside there here "
                 "now again only even else closely far apart alone upside backwards forward forwards "
                 "sideways overhead indoors outdoors downhill uphill ahead aside barely fully partially neatly "
                 "brightly peacefully happily intently carefully casually currently newly freshly brightly slightly "
                 "somewhat extremely incredibly highly nicely oddly intricately mostly nearly being yet")
# Adverbs that may sit inside a noun phrase before an adjective ("a very large dog").
INTENSIFIERS = _words("very extremely really quite incredibly highly brightly nicely oddly intricately slightly "
                      "somewhat freshly newly neatly partially fully mostly nearly beautifully")
PRONOUNS = _words("it they them he she him i we you us me itself himself herself themselves something someone "
                  "somebody anything everything nothing everyone others "
                  "it's there's that's here's he's she's they're what's")
AUXILIARIES = _words("is are was were be been am being 's can could will would may might must should does do did "
                     "appears appear seems seem")
# "or" joins clauses in captions far more often than it joins nouns.
SUBORDINATORS = _words("while as when where because but so then whilst although though if until since or")
RELATIVES = _words("that who which whom whose")
CONJUNCTIONS = _words("and & plus")

COLOURS = _words("white black red green blue brown yellow pink orange purple gray grey tan beige silver gold golden "
                 "maroon teal cyan navy violet turquoise cream ivory olive lavender magenta crimson bronze "
                 "multicolored multi-colored colorful colourful blond blonde brunette")
# Nouns that name a material; before a noun they are attributes ("metal table"), else objects ("made of metal").
MATERIALS = _words("wooden wood metal metallic plastic glass stone brick steel iron ceramic leather marble concrete "
                   "paper cardboard cement clay porcelain rubber wicker denim cotton wool silk straw tile granite "
                   "chrome copper aluminum tin bamboo vinyl fur lace velvet")
ADJECTIVES = COLOURS | _words(
    "large small big little tall short long huge giant tiny wide narrow thick thin high low deep shallow massive "
    "enormous mini miniature oversized young old older elderly new adult ancient antique vintage modern fresh ripe "
    "rotten open closed empty full clean dirty messy busy crowded colored bright dark light pale sunny cloudy snowy "
    "grassy sandy rocky muddy dusty wet dry hot cold warm cool cute beautiful pretty nice fancy happy sad funny "
    "lush flat round square oval circular rectangular shiny fluffy furry hairy plain simple different same single "
    "double whole half entire male female asian african american professional public commercial electric "
    "electronic digital outdoor indoor wild domestic serious delicious tasty healthy heavy striped spotted "
    "decorative ornate pregnant bald shirtless barefoot asleep awake ready leafy wooden stainless cheesy crispy "
    "raw juicy sweet sour spicy lit blurry fuzzy hazy foggy rainy stormy windy dim cozy tidy neat fat skinny "
    "lone lonely friendly lovely ugly curly elderly silly chilly lively early daily quiet calm strange odd unusual "
    "unique interesting cluttered upscale classic rustic historic "
    "vast tropical urban rural residential scenic gorgeous lovely adorable ugly dead alive glossy fake real toy "
    "stuffed frozen broken fallen sliced grilled fried baked curly straight bare steep giant smart cellular "
    "mobile personal remote wireless portable private local huge pink main left right upper lower inner "
    "outer other extra own next last first second third final various numerous crooked "
    "overcast abandoned chocolate vanilla polar french italian chinese japanese mexican wet-suited dense sparse "
    "bushy tan cloudless clear blue-and-white black-and-white red-and-white hardwood artificial natural "
    "formal casual elegant shabby worn tiled wooded fenced paved hind slow fast facial traditional industrial "
    "historical musical medical official national international vertical horizontal central typical floral "
    "coastal royal tribal bridal electrical")
# -ing words that are nouns, never verbs.
ING_NOUNS = _words("building buildings ceiling ceilings clothing painting paintings icing railing railings wedding "
                   "evening morning king ring rings thing things string strings wing wings swing swings spring "
                   "topping toppings frosting stuffing dressing seating setting bedding lighting pudding dumpling "
                   "dumplings filling siding awning awnings sibling clearing earring earrings flooring "
                   "netting shelving scaffolding lettering drawing drawings carving carvings ping during something "
                   "nothing anything everything opening outing landing pudding kitten-sitting")
# -ing words that, before a noun, make one compound noun with it ("living room", "dining table").
ING_COMPOUNDS = _words("dining living parking cutting swimming waiting sliding frying baking washing sleeping shopping "
                       "vending boxing changing landing fishing walking skating surfing skiing racing serving "
                       "mixing cooking drinking passing reading running training dressing meeting bathing riding "
                       "ironing fighting boarding rolling sitting camping hiking loading")
# Nouns ending in -ly (other -ly words are adverbs unless listed as adjectives).
LY_NOUNS = _words("family fly butterfly dragonfly firefly belly jelly lily ally rally bully holly assembly supply italy "
                  "reply anomaly monopoly doily gully")
# Nouns ending in -ed that the participle rule must leave alone.
ED_NOUNS = _words("bed beds shed sled seed feed speed steed weed reed hundred flatbed birdseed seaweed flowerbed "
                  "sunbed bobsled moped red")
# Irregular past tenses and participles; the regular ones are any word ending in -ed.
IRREGULAR_PAST = _words("sat stood held rode ate eaten lay lain laid flew flown ran took taken made got gotten drove "
                        "driven hung caught threw thrown built seen shown worn broken cut put spread fallen sold "
                        "bought lit led fed hidden written drawn grown blown frozen stuck swung spun bent "
                        "kept brought sent found struck swept wound dug split slept sunk burnt torn")

# Verb lemmas whose -s form (and base form after a plural subject) is a verb: "a cat sits", "two dogs play".
# Lemmas whose -s form is mostly a noun ("waves", "lights", "signs", "tracks") are left out on purpose.
VERBS = _words(
    "sit stand hold ride lay lie look eat walk play fly sleep rest watch pose show wait graze carry cut throw hit "
    "catch take get make drive run jump lean hang reach pull push wear use contain feature read cross kiss smile "
    "laugh stare gaze travel prepare serve enjoy cook fill cover wash brush drink talk swing kick sail skate ski "
    "surf climb chase grab face point appear seem perch dress display sell leave enter head swim pass move go come "
    "lick bite peer pet feed help try work fix check cuddle hug hide fight follow lead pick place put sing dance "
    "tie open close approach attempt balance beg bend blow celebrate clean compete cycle dive float glow hover "
    "ignore include lack land listen lunge observe offer operate pack paddle poke pour provide race relax rise roll "
    "share snowboard spray stretch tilt unload yawn adorn sport skateboard hop wag swat peek crouch kneel squat "
    "tug toss shake blend drag fetch guide herd hunt lick nap nibble nuzzle paint park pat paw peck pitch plow "
    "prance reflect ring rub scratch shine sip slide slice smell sniff snuggle soar splash spread spin stack stir "
    "stroll swipe tap taste text throw touch tow trot turn type wade walk wander wave wipe chew drop lift lower "
    "raise mount overlook border line surround frame block guard hit bat serve greet kick shield straddle "
    "grill grin frown cry yell sniff huddle gather stroll jog hike fish bathe sunbathe mow rake shovel sweep "
    "fold hand give feed")
# Lemmas whose -s form is mostly a plural noun ("waves", "lights", "slices") stay nouns.
VERBS -= _words("line frame block guard bat fish ring type text head face place hand roll slice stack spread paint wave "
                "border")
VERBS |= _words("stop")
IRREGULAR_PLURALS = _words("men women people children sheep cattle deer geese mice feet teeth police fish kids folks "
                           "persons cows")

# People and animals: an -ing verb after "X with/in Y" belongs to whichever of them can act
# ("a man in a coat skiing", "a bathroom with towels hanging", "a man watching a dog playing").
ANIMATE = _words(
    "man men woman women person people boy boys girl girls child children kid kids baby babies toddler guy guys "
    "lady ladies gentleman adult adults teenager teen player players skier skiers surfer surfers skateboarder "
    "skateboarders snowboarder rider riders biker bikers batter catcher umpire pitcher chef cook worker workers "
    "couple family crowd team student students officer soldier soldiers tourist tourists friends mother father son "
    "daughter bride groom someone he she they dog dogs puppy cat cats kitten horse horses cow cows calf sheep lamb "
    "elephant elephants giraffe giraffes zebra zebras bear bears bird birds animal animals duck ducks goat goats "
    "cattle pigeon pigeons seagull bull monkey deer")
# Multi-word expressions read as one token, longest first.
MULTI_PREPOSITIONS = {tuple(p.split()) for p in (
    "next to", "close to", "near to", "in front of", "on top of", "out of", "away from", "across from", "inside of",
    "outside of", "all over", "in between", "together with", "on board", "up against", "instead of",
    "because of", "apart from", "far from", "in the shape of", "in addition to", "adjacent to", "ahead of",
)} | {(a, "the", part, "of") for a in ("in", "on", "at", "to", "by", "near") for part in (
    "middle", "side", "edge", "end", "back", "top", "front", "center", "centre", "corner", "bottom", "base", "left",
    "right", "rear", "foot", "head", "tip", "outskirts", "shore", "banks", "bank", "entrance", "surface", "inside",
)} | {("on", "the", "other", "side", "of"), ("on", "either", "side", "of"), ("on", "both", "sides", "of"),
     ("on", "the", "far", "side", "of"), ("to", "the", "side", "of")}
MULTI_NOUNS = {tuple(p.split()) for p in (
    "close up", "hot dog", "hot dogs", "living room", "living rooms", "ice cream", "teddy bear", "teddy bears",
    "double decker", "fire hydrant", "cell phone", "cell phones", "stop sign", "stop light", "tennis racket",
    "tennis racquet", "french fries", "high chair", "hot tub", "flat screen", "polar bear", "polar bears",
    "stuffed animal", "stuffed animals", "parking lot", "remote control", "remote controls", "traffic light",
    "traffic lights", "t shirt", "wii remote", "wii remotes", "new york", "united states", "united airlines",
    "hot air balloon",
)}
MULTI_PRONOUNS = {("each", "other"), ("one", "another")}
MULTI_CONJUNCTIONS = {("as", "well", "as"), ("along", "with")}
# Caption openers that say what the picture is, not what is in it: "a picture of", "a close up of".
FRAMES = _words("picture pictures image images photo photos photograph photographs view shot snapshot closeup "
                "close-up close up scene drawing illustration depiction")


# -- a word's class out of context ---------------------------------------------------------------
# Unambiguous classes are final tags (NOUN, ADJ, PREP, ...); the ambiguous ones are settled in context
# by segments._tag: NV noun-or-verb ("stands"), ING, ED (participles), MAT (material), PP (preposition or
# particle), PA (preposition or adverb), Q / QN (quantity noun, quantity-or-number), DETP (determiner or
# pronoun), and a few single words (THAT, ONE, AS, HAVE, THERE, LIGHT, CAN, POSS "'s").

MULTI_WORDS = {**{k: "PREP" for k in MULTI_PREPOSITIONS}, **{k: "NOUN" for k in MULTI_NOUNS},
               **{k: "PRON" for k in MULTI_PRONOUNS}, **{k: "AND" for k in MULTI_CONJUNCTIONS}}
_SINGLE = {",": "COMMA", ".": "STOP", "'s": "POSS", "there": "THERE", "here": "THERE", "one": "ONE", "as": "AS",
           "that": "THAT", "has": "HAVE", "have": "HAVE", "had": "HAVE", "light": "LIGHT", "can": "CAN"}
_CLOSED = (("AND", CONJUNCTIONS), ("PRON", PRONOUNS), ("REL", RELATIVES), ("AUX", AUXILIARIES),
           ("SUB", SUBORDINATORS), ("DETP", DETERMINERS))


def _3sg(lemma: str) -> str:
    if lemma.endswith(("s", "sh", "ch", "x", "z", "o")):
        return lemma + "es"
    return lemma[:-1] + "ies" if lemma.endswith("y") and lemma[-2] not in "aeiou" else lemma + "s"


VERB_FORMS = {**{v: "base" for v in VERBS}, **{_3sg(v): "3sg" for v in VERBS}}


def word_class(w: str) -> str:
    """The class of one lower-cased word out of context; anything unknown is a noun."""
    if w in _SINGLE:
        return _SINGLE[w]
    for cls, words in _CLOSED:
        if w in words:
            return cls
    if w in QUANTITIES:
        return "QN" if w in NUMBERS else "Q"
    if w in NUMBERS or w.isdigit():
        return "NUM"
    if w in PREPOSITIONS:
        return "PP" if w in PARTICLES else "PA" if w in ADVERBS else "PREP"
    if w in PARTICLES or w in ADVERBS:
        return "PP" if w in PARTICLES else "ADV"
    if w in ADJECTIVES or w in MATERIALS:
        return "ADJ" if w in ADJECTIVES else "MAT"
    if w in ING_NOUNS:
        return "NOUN"
    if w.endswith("ly") and len(w) > 4 and w not in LY_NOUNS:
        return "ADV"  # "marching triumphantly"
    if w.endswith("ing") and len(w) > 4:
        return "ING"
    if w in IRREGULAR_PAST or (w.endswith("ed") and len(w) > 4 and not w.endswith("eed") and w not in ED_NOUNS):
        return "ED"
    if "-" in w:  # "black-and-white", "long-haired", "three-point" describe; "t-shirt", "close-up" name
        first, last = w.split("-")[0], w.split("-")[-1]
        adj = last.endswith(("ed", "ing", "like")) or last in ADJECTIVES
        return "ADJ" if adj or (first in NUMBERS and not last.endswith("s")) else "NOUN"
    return "NV" if w in VERB_FORMS else "NOUN"


def is_plural(w: str) -> bool:
    return w in IRREGULAR_PLURALS or (w.endswith("s") and not w.endswith(("ss", "us", "is")))
