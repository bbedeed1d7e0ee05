"""A1111 / kohya prompt attention syntax.

    (text)        weight x 1.1 (nestable: ((text)) = x 1.21)
    [text]        weight / 1.1
    (text:1.5)    weight x 1.5
    \\( \\) \\[ \\] \\\\   literal brackets / backslash
Unclosed brackets apply to the end of the prompt; a closing bracket without an opening one is plain text
(A1111 semantics). kohya's gen_img has no BREAK keyword, so neither do we.
"""
import re

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

# One lexical piece per match: an escape, a bracket, a ":weight)" closer, a text run, or a lone ":".
_PIECE = re.compile(r"""
    \\[()\[\]\\]                                  # escaped bracket or backslash
  | \\                                            # lone backslash: literal
  | [(\[]                                         # opening bracket
  | :\s*(?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)   # explicit weight closing a round bracket
  | [)\]]                                         # closing bracket
  | [^\\()\[\]:]+                                 # plain text
  | :                                             # colon that is not a weight
""", re.VERBOSE)


def parse_prompt_weights(text):
    """Return (fragments, weights): the prompt split into text pieces with their attention weights.

    Adjacent pieces with equal weight are merged; an empty prompt gives ([""], [1.0]).
    """
    fragments, weights = [], []
    open_round, open_square = [], []

    def scale_from(start, factor):
        for i in range(start, len(weights)):
            weights[i] *= factor

    for match in _PIECE.finditer(text):
        piece, weight = match.group(0), match.group("weight")
        if piece.startswith("\\"):
            fragments.append(piece[1:] if len(piece) > 1 else piece)
            weights.append(1.0)
        elif piece == "(":
            open_round.append(len(fragments))
        elif piece == "[":
            open_square.append(len(fragments))
        elif weight is not None and open_round:
            scale_from(open_round.pop(), float(weight))
        elif piece == ")" and open_round:
            scale_from(open_round.pop(), ROUND_FACTOR)
        elif piece == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_FACTOR)
        else:
            fragments.append(piece)
            weights.append(1.0)
    for start in open_round:
        scale_from(start, ROUND_FACTOR)
    for start in open_square:
        scale_from(start, SQUARE_FACTOR)
    return _merge_equal(fragments, weights)


def _merge_equal(fragments, weights):
    if not fragments:
        return [""], [1.0]
    merged_f, merged_w = [fragments[0]], [weights[0]]
    for fragment, weight in zip(fragments[1:], weights[1:]):
        if weight == merged_w[-1]:
            merged_f[-1] += fragment
        else:
            merged_f.append(fragment)
            merged_w.append(weight)
    return merged_f, merged_w
