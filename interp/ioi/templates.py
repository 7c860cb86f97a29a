"""The IOI prompt distribution p_IOI (Wang et al. 2022), written from the paper's description.

Each template is a BABA sentence: S ("[B]") and IO ("[A]") are introduced, S is repeated,
and the model should complete with IO. Its ABBA version swaps the first [A] and [B].
Names, places and objects are inserted with a leading space and must each be one token.
"""

BABA_TEMPLATES = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
]


def to_abba(template: str) -> str:
    """Swap the first [A] and [B]: "[B] and [A] ... [B]" -> "[A] and [B] ... [B]"."""
    first_b, first_a = template.index("[B]"), template.index("[A]")
    lo, hi = sorted((first_b, first_a))
    swapped = {"[B]": "[A]", "[A]": "[B]"}
    return (template[:lo] + swapped[template[lo:lo + 3]] + template[lo + 3:hi]
            + swapped[template[hi:hi + 3]] + template[hi + 3:])


ABBA_TEMPLATES = [to_abba(t) for t in BABA_TEMPLATES]
TEMPLATES = BABA_TEMPLATES + ABBA_TEMPLATES  # 30 templates: 15 BABA, then their ABBA versions

NAMES = [
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Paul", "Kate", "Anne",
    "Rose", "Mark", "Michael", "David", "Sarah", "Lisa", "Laura", "Emma", "Alice", "Jack",
    "Peter", "George", "Henry", "Sam", "Lucy", "Ben", "Jane", "Robert", "William", "Richard",
    "Thomas", "Charles", "Daniel", "Matthew", "Andrew", "Joseph", "Steven", "Kevin", "Brian",
    "Edward", "Ryan", "Jacob", "Eric", "Adam", "Nathan", "Justin", "Scott", "Frank", "Gregory",
    "Patrick", "Jeff", "Susan", "Karen", "Nancy", "Betty", "Helen", "Sandra", "Donna", "Carol",
    "Ruth", "Sharon", "Michelle", "Linda", "Jessica", "Elizabeth", "Maria", "Anna", "Rachel",
    "Victoria", "Grace", "Julia", "Alex", "Max", "Leo", "Oscar", "Harry", "Charlie", "Chris",
    "Tim", "Joe", "Bob", "Bill", "Jim", "Fred", "Carl", "Ray", "Roy", "Lee", "Ian", "Sean",
]
PLACES = [
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
    "park", "beach", "market", "library", "church", "hotel", "airport", "museum", "bank",
    "kitchen", "farm", "theater",
]
OBJECTS = [
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "ball",
    "book", "gift", "letter", "cake", "flower", "pen", "bag", "key", "card", "phone", "hat",
]

# The paper code's "mixed" prompt type: the first 7 BABA templates, then their ABBA versions.
PAPER_TEMPLATES = BABA_TEMPLATES[:7] + ABBA_TEMPLATES[:7]
