"""Chat templates: a model without one (a base model) still chats, in a fallback format."""

from engine.model.chat_format import PLAIN_TEMPLATE, fallback_chat_template

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]


def test_a_vocabulary_without_gemma_turn_markers_gets_user_assistant_paragraphs(real_model):
    tokenizer = real_model.tokenizer  # SmolLM2's: no <start_of_turn>
    assert fallback_chat_template(tokenizer) == PLAIN_TEMPLATE
    text = tokenizer.apply_chat_template(CONVERSATION, chat_template=PLAIN_TEMPLATE, add_generation_prompt=True,
                                         tokenize=False)
    assert text == tokenizer.bos_token + "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Bye\n\nAssistant:"
